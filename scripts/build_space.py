"""A Hugging Face Space of the app: exactly the files it needs, in a folder outside the repository.

    python scripts/build_space.py OUT_DIR [--checkpoints DIR [--checkpoints DIR]] [--check-only] [--no-start]

Writes app.py, README.md (its YAML front matter is the Space's configuration), requirements.txt,
the guidescope/ and demo/ packages (their Python files and the data files their code names), the
checkpoint folders (weights, JSON configs, defaults.json, README.md; from --checkpoints, at most two,
placed where the app looks for the shipped pixel and latent bundles; default the shipped ones) and a .gitattributes that stores every *.safetensors file, and any other binary file
or file over 10 MB, in Git LFS: a Space repository refuses such files otherwise. OUT_DIR must lie
outside the repository and be empty, absent, or a previous build of this command (marked by its
manifest, .space-build.json). A .git folder in it is left alone, so the build can be committed
from there and rebuilt in place.

Then it checks the folder: the front matter parses (title, sdk: gradio, an sdk_version that
requirements.txt allows, app_file present, python_version); every file is small and text or
stored in LFS (the .gitattributes rules matched as git matches them); nothing from tests/, docs/
or scripts/ and no bytecode; and, unless --no-start, `python app.py` started in the folder, on
its own files, answers HTTP. --check-only runs the checks on an existing folder without writing.
Exits 0 when every check passes, 1 with the failures listed otherwise, 2 when it refuses OUT_DIR.
"""
from __future__ import annotations

import argparse
import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from demo.launch import DEFAULT_CHECKPOINTS  # noqa: E402  (where app.py looks, relative to its folder)

TOP_FILES = ("app.py", "README.md", "requirements.txt")
PACKAGES = ("guidescope", "demo")
CHECKPOINT_FILES = ("*.safetensors", "*.json", "README.md")  # weights, configs, defaults.json, model card
NEEDED_CHECKPOINTS = ("unet", "classifier")  # the app refuses to start without these
NEVER_COPIED = ("tests", "docs", "scripts")
MANIFEST = ".space-build.json"
GITATTRIBUTES = ".gitattributes"
KEPT = (".git",)  # left alone in OUT_DIR, never copied, never checked

# Hugging Face refuses files over 10 MB, and binary files, that Git LFS does not store.
LFS_LIMIT_BYTES = 10_000_000
LFS_ATTRIBUTES = "filter=lfs diff=lfs merge=lfs -text"
LFS_PATTERNS = ("*.safetensors",)
START_TIMEOUT_S = 300.0  # an upper bound for loading the checkpoints on a slow machine


class Refused(Exception):
    """OUT_DIR or the sources cannot be used; nothing was written."""


# -- what the Space holds ----------------------------------------------------------------------------

def _string_constants(source: Path) -> set[str]:
    return {node.value for node in ast.walk(ast.parse(source.read_text(), str(source)))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)}


def package_files(package: Path) -> list[Path]:
    """The package's Python files, and the other files in it that its code names in a string
    (such as demo/explain.md), without bytecode."""
    def wanted(path: Path) -> bool:
        return path.is_file() and "__pycache__" not in path.relative_to(package).parts

    python = sorted(p for p in package.rglob("*.py") if wanted(p))
    named = set().union(*(_string_constants(p) for p in python))
    data = [p for p in sorted(package.rglob("*")) if wanted(p) and p.suffix not in (".py", ".pyc")
            and (p.name in named or p.relative_to(package).as_posix() in named)]
    return python + data


def checkpoint_files(folder: Path) -> list[Path]:
    """The checkpoint folder's weights, JSON configs and README.md (not its training logs)."""
    files = sorted({p for pattern in CHECKPOINT_FILES for p in folder.glob(pattern) if p.is_file()})
    missing = [f"{name}.{ext}" for name in NEEDED_CHECKPOINTS for ext in ("safetensors", "json")
               if not (folder / f"{name}.{ext}").is_file()]
    if missing:
        raise Refused(f"{folder} lacks {', '.join(missing)}: the app needs unet and classifier checkpoints")
    return files


def space_files(checkpoints: list[Path]) -> dict[str, Path]:
    """Every file of the Space: its path in the Space -> its source. Checkpoint folder k goes
    where the app looks for shipped bundle k (demo/launch.py DEFAULT_CHECKPOINTS)."""
    if not 1 <= len(checkpoints) <= len(DEFAULT_CHECKPOINTS):
        raise Refused(f"give one to {len(DEFAULT_CHECKPOINTS)} checkpoint folders, got {len(checkpoints)}")
    files = {name: REPO / name for name in TOP_FILES}
    for package in PACKAGES:
        files.update({p.relative_to(REPO).as_posix(): p for p in package_files(REPO / package)})
    for place, folder in zip(DEFAULT_CHECKPOINTS, checkpoints):
        files.update({f"{place}/{p.name}": p for p in checkpoint_files(folder)})
    return files


def is_binary(path: Path) -> bool:
    """Git's test: a NUL byte in the first 8000 bytes."""
    with open(path, "rb") as f:
        return b"\0" in f.read(8000)


def needs_lfs(path: Path) -> bool:
    return path.stat().st_size > LFS_LIMIT_BYTES or is_binary(path)


def gitattributes_text(out: Path, files: list[str]) -> str:
    """LFS_PATTERNS, then one anchored line per other file that needs LFS."""
    lines = [f"{pattern} {LFS_ATTRIBUTES}" for pattern in LFS_PATTERNS]
    rules = parse_gitattributes("\n".join(lines))
    for name in files:
        if needs_lfs(out / name) and not stored_in_lfs(rules, name):
            if re.search(r'[\s"\\]', name):
                raise Refused(f"{name} needs Git LFS but its name has a space, quote or backslash")
            escaped = re.sub(r"([*?[])", r"\\\1", name)  # glob characters, literally
            lines.append(f"/{escaped} {LFS_ATTRIBUTES}")
    return "\n".join(lines) + "\n"


# -- .gitattributes, matched as git matches it -------------------------------------------------------

def _glob_regex(glob: str) -> str:
    """A regular expression for a wildmatch glob over a '/'-separated path: * and ? stay within
    one folder, a **/ or /** segment spans folders, [...] is a class (! or ^ negates), \\ escapes."""
    out, i = [], 0
    while i < len(glob):
        c = glob[i]
        if glob.startswith("**/", i) and (i == 0 or glob[i - 1] == "/"):
            out.append("(?:.*/)?")
            i += 3
        elif glob.startswith("**", i) and i == len(glob) - 2 and (i == 0 or glob[i - 1] == "/"):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1 + (glob.startswith("**", i))  # other ** act as *
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "\\" and i + 1 < len(glob):
            out.append(re.escape(glob[i + 1]))
            i += 2
        elif c == "[" and (end := glob.find("]", i + 2 if glob[i + 1:i + 2] in ("!", "^") else i + 1)) != -1:
            body = glob[i + 1:end]
            negate = body[:1] in ("!", "^")
            body = body[1:] if negate else body
            escaped = "".join("\\" + ch if ch in "\\^[]" else ch for ch in body)
            out.append(f"(?!/)[^{escaped}]" if negate else f"[{escaped}]")
            i = end + 1
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)


def parse_gitattributes(text: str) -> list[tuple[re.Pattern, dict[str, str | None]]]:
    """(pattern, attributes) per line. A pattern with no '/' but a trailing one matches a file's
    name in any folder; any other matches its path from the file's folder. Attributes: name=value,
    name (set: "true"), -name (unset: "false"), !name (unspecified: None)."""
    rules = []
    for line in text.splitlines():
        fields = line.split()
        if not fields or fields[0].startswith("#") or fields[0].startswith(("!", "[attr]")):
            continue  # comments, blank lines, macro definitions; negated patterns are invalid in git
        pattern, attributes = fields[0], {}
        if pattern.endswith("/"):
            continue  # matches folders only, and attributes do not pass from a folder to its files
        for field in fields[1:]:
            if field[0] in "-!":
                attributes[field[1:]] = "false" if field[0] == "-" else None
            else:
                name, _, value = field.partition("=")
                attributes[name] = value if "=" in field else "true"
        if "/" in pattern:
            regex = _glob_regex(pattern.lstrip("/"))
        else:
            regex = "(?:.*/)?" + _glob_regex(pattern)
        rules.append((re.compile(regex + r"\Z", re.DOTALL), attributes))
    return rules


def stored_in_lfs(rules, path: str) -> bool:
    """Whether the last rule matching path that names `filter` sets it to lfs."""
    value = None
    for regex, attributes in rules:
        if "filter" in attributes and regex.match(path):
            value = attributes["filter"]
    return value == "lfs"


# -- building ----------------------------------------------------------------------------------------

def _present(out: Path) -> list[str]:
    """Every file under out, as '/'-separated relative paths, except those under KEPT."""
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*")
                  if not p.is_dir() and p.relative_to(out).parts[0] not in KEPT)


def clear_previous_build(out: Path) -> None:
    """Make out ready to write into: absent or empty, or a previous build holding only its own files."""
    if out.resolve().is_relative_to(REPO):
        raise Refused(f"{out} is inside the repository; choose a folder outside {REPO}")
    if out.exists() and not out.is_dir():
        raise Refused(f"{out} is not a folder")
    present = _present(out) if out.exists() else []
    if not present:
        return
    if not (out / MANIFEST).is_file():
        raise Refused(f"{out} is not empty and holds no {MANIFEST} from an earlier build; choose an empty folder")
    written = set(json.loads((out / MANIFEST).read_text())["files"])
    others = [name for name in present if name not in written and name != MANIFEST]
    if others:
        raise Refused(f"{out} holds files this command did not write: {', '.join(others[:5])}")
    for name in present:
        (out / name).unlink()
    for folder in sorted((p for p in out.rglob("*") if p.is_dir() and p.relative_to(out).parts[0] not in KEPT),
                         key=lambda p: len(p.parts), reverse=True):
        folder.rmdir()


def build(out: Path, checkpoints: Path | list[Path]) -> list[str]:
    """Write the Space into out; returns the files written."""
    checkpoints = [checkpoints] if isinstance(checkpoints, Path) else list(checkpoints)
    for folder in checkpoints:
        if folder.resolve().is_relative_to(out.resolve()):
            raise Refused(f"the checkpoints {folder} lie inside {out}, which the build replaces")
    files = space_files(checkpoints)
    clear_previous_build(out)
    for name, source in files.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, out / name)
    (out / GITATTRIBUTES).write_text(gitattributes_text(out, list(files)))
    written = sorted([*files, GITATTRIBUTES])
    (out / MANIFEST).write_text(json.dumps({"files": written, "checkpoints": [str(f.resolve()) for f in checkpoints]},
                                           indent=2))
    return written


# -- checking ----------------------------------------------------------------------------------------

class CheckFailed(Exception):
    pass


def front_matter(readme: Path) -> dict:
    import yaml

    text = readme.read_text() if readme.is_file() else ""
    match = re.match(r"---\n(.*?)\n---\n", text, re.DOTALL)
    if not match:
        raise CheckFailed(f"{readme.name} does not start with a '---' YAML front matter block")
    try:
        config = yaml.safe_load(match.group(1))
    except yaml.YAMLError as err:
        raise CheckFailed(f"the front matter of {readme.name} is not valid YAML: {err}") from None
    if not isinstance(config, dict):
        raise CheckFailed(f"the front matter of {readme.name} is not a mapping")
    return config


def gradio_requirement(requirements: Path):
    from packaging.requirements import InvalidRequirement, Requirement

    for line in requirements.read_text().splitlines() if requirements.is_file() else []:
        try:
            requirement = Requirement(line.split("#")[0].strip())
        except InvalidRequirement:
            continue
        if requirement.name.lower() == "gradio":
            return requirement
    return None


def check_front_matter(out: Path) -> str:
    from packaging.version import InvalidVersion, Version

    config = front_matter(out / "README.md")
    problems = []
    if not isinstance(config.get("title"), str) or not config["title"].strip():
        problems.append("no title")
    if config.get("sdk") != "gradio":
        problems.append(f"sdk is {config.get('sdk')!r}, not 'gradio'")
    sdk_version, requirement = str(config.get("sdk_version", "")), gradio_requirement(out / "requirements.txt")
    try:
        if requirement is not None and not requirement.specifier.contains(Version(sdk_version), prereleases=True):
            problems.append(f"sdk_version {sdk_version} is outside requirements.txt's {requirement}")
    except InvalidVersion:
        problems.append(f"sdk_version {sdk_version!r} is not a version")
    app_file = config.get("app_file")
    if not isinstance(app_file, str) or not (out / app_file).is_file():
        problems.append(f"app_file {app_file!r} is not a file in the folder")
    python_version = config.get("python_version")
    if not isinstance(python_version, str) or not re.fullmatch(r"3\.\d+(\.\d+)?", python_version):
        problems.append(f"python_version {python_version!r} is not a quoted version such as \"3.11\"")
    if problems:
        raise CheckFailed("README.md front matter: " + "; ".join(problems))
    return (f"front matter: {config['title']!r}, sdk gradio {sdk_version}, python {python_version}, "
            f"app_file {app_file}")


def check_lfs(out: Path) -> str:
    attributes = out / GITATTRIBUTES
    rules = parse_gitattributes(attributes.read_text() if attributes.is_file() else "")
    files = _present(out)
    outside = [f"{name} ({(out / name).stat().st_size / 1e6:.1f} MB{', binary' if is_binary(out / name) else ''})"
               for name in files if needs_lfs(out / name) and not stored_in_lfs(rules, name)]
    if outside:
        raise CheckFailed(f"not stored in Git LFS by {GITATTRIBUTES} but over {LFS_LIMIT_BYTES / 1e6:.0f} MB "
                          f"or binary: {', '.join(outside)}")
    in_lfs = [name for name in files if stored_in_lfs(rules, name)]
    return (f"sizes: every file over {LFS_LIMIT_BYTES / 1e6:.0f} MB or binary is in Git LFS "
            f"({len(in_lfs)} LFS file(s), {len(files) - len(in_lfs)} plain)")


def check_contents(out: Path) -> str:
    stray = [name for name in _present(out) if name.split("/")[0] in NEVER_COPIED
             or "__pycache__" in name.split("/") or name.endswith(".pyc")]
    if stray:
        raise CheckFailed(f"files a Space does not need: {', '.join(stray[:10])}")
    return f"contents: nothing from {', '.join(f'{d}/' for d in NEVER_COPIED)}, no bytecode"


def check_starts(out: Path) -> str:
    """`python app.py` in out, importing its own packages, answers HTTP."""
    from scripts.launcher import child_environment, running_app

    code = "import importlib.util as u; print('\\n'.join(u.find_spec(p).origin for p in %r))" % (PACKAGES,)
    found = subprocess.run([sys.executable, "-c", code], cwd=out, env=child_environment(out),
                           capture_output=True, text=True, timeout=60)
    foreign = [line for line in found.stdout.splitlines() if not Path(line).resolve().is_relative_to(out.resolve())]
    if found.returncode != 0 or foreign:
        raise CheckFailed(f"the app in {out} would import packages from elsewhere: {foreign or found.stderr[-500:]}")
    try:
        with running_app(None, timeout_s=START_TIMEOUT_S, app_dir=out) as url:
            pass
    except RuntimeError as err:
        raise CheckFailed(str(err)) from None
    return f"start: `python app.py` in {out} served {url} on its own files, then stopped"


def check(out: Path, start: bool) -> list[str]:
    """Every check's message; raises CheckFailed listing every failure."""
    passed, failed = [], []
    checks = [check_front_matter, check_lfs, check_contents]
    for one in checks:
        try:
            passed.append(one(out))
        except CheckFailed as err:
            failed.append(str(err))
    if start and not failed:
        try:
            passed.append(check_starts(out))
        except CheckFailed as err:
            failed.append(str(err))
    if failed:
        raise CheckFailed("\n".join(failed))
    return passed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python scripts/build_space.py", description=__doc__.split("\n\n")[0])
    p.add_argument("out", metavar="OUT_DIR", type=Path, help="folder for the Space, outside the repository")
    p.add_argument("--checkpoints", type=Path, action="append", default=None,
                   help=f"checkpoint folder to ship, once or twice (default: {', '.join(DEFAULT_CHECKPOINTS)}, "
                        "those present)")
    p.add_argument("--check-only", action="store_true", help="check an existing OUT_DIR, write nothing")
    p.add_argument("--no-start", action="store_true", help="skip starting the app")
    args = p.parse_args(argv)
    out = args.out.resolve()
    try:
        if args.check_only:
            if not out.is_dir():
                raise Refused(f"{out} is not a folder")
        else:
            shipped = [REPO / place for place in DEFAULT_CHECKPOINTS if (REPO / place).is_dir()]
            written = build(out, args.checkpoints or shipped)
            print(f"wrote {len(written)} files to {out}:")
            for name in written:
                print(f"  {name}  ({(out / name).stat().st_size / 1e6:.2f} MB)")
    except Refused as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        passed = check(out, start=not args.no_start)
    except CheckFailed as err:
        print(f"the Space in {out} fails its checks:\n{err}", file=sys.stderr)
        return 1
    print("checks passed:", *(f"  {line}" for line in passed), sep="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

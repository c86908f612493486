"""The app as a Hugging Face Space: the handlers sample under ZeroGPU's `spaces.GPU` when that
package imports (and plainly when it does not), and scripts/build_space.py assembles a folder that
a Space repository accepts (every large or binary file in Git LFS, as git itself reads the rules)
and that serves /generate from its own files alone."""
from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from gradio_client import Client
from PIL import Image

from app_fixtures import CLASS_NAMES, bundle, checkpoint_dir  # noqa: F401
from demo.handlers import Handlers
from demo.zerogpu import on_gpu
from scripts import build_space
from scripts.launcher import running_app

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "checkpoints" / "fashion-mnist"
# Each over 10 MB: both bundles' UNets and evaluators (the latent bundle's is a copy of the pixel one's).
BIG_WEIGHTS = ("checkpoints/fashion-mnist/evaluator.safetensors", "checkpoints/fashion-mnist/unet.safetensors",
               "checkpoints/fashion-mnist-latent/evaluator.safetensors", "checkpoints/fashion-mnist-latent/unet.safetensors")
TINY_RUN = dict(class_name=CLASS_NAMES[0], scale=1.0, unet="unconditional", cfg_scale=0.0, steps=2, sampler="ddim",
                eta=0.0, num_images=1, seed=0)
GENEROUS_S = 600  # upper bounds only: a shared machine may be slow


class RecordingGPU:
    """Stands in for spaces.GPU: remembers each function it wraps and counts calls through it."""

    def __init__(self):
        self.wrapped, self.calls = [], 0

    def __call__(self, fn):
        self.wrapped.append(fn)

        @functools.wraps(fn)
        def on_device(*args, **kwargs):
            self.calls += 1
            return fn(*args, **kwargs)

        return on_device


# -- ZeroGPU ----------------------------------------------------------------------------------------

def test_on_gpu_returns_what_spaces_gpu_returns_when_the_package_imports(monkeypatch):
    spaces = pytest.importorskip("spaces")
    gpu = RecordingGPU()
    monkeypatch.setattr(spaces, "GPU", gpu)

    def run():
        return "ran"

    wrapped = on_gpu(run)
    assert gpu.wrapped == [run] and wrapped is not run
    assert wrapped() == "ran" and gpu.calls == 1


def test_on_gpu_returns_the_function_itself_without_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "spaces", None)  # `import spaces` now raises ImportError

    def run():
        return "ran"

    assert on_gpu(run) is run


def test_the_handlers_sample_under_spaces_gpu_when_the_package_imports(bundle, tmp_path, monkeypatch):
    spaces = pytest.importorskip("spaces")
    gpu = RecordingGPU()
    monkeypatch.setattr(spaces, "GPU", gpu)
    handlers = Handlers(bundle, downloads=tmp_path)
    assert gpu.wrapped == [handlers.stream]
    frames = list(handlers.generate(**TINY_RUN))
    assert frames and gpu.calls == 1


def test_the_handlers_sample_plainly_without_the_package(bundle, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "spaces", None)
    frames = list(Handlers(bundle, downloads=tmp_path).generate(**TINY_RUN))
    assert frames


# -- the Space folder -------------------------------------------------------------------------------

def build(*args: str) -> subprocess.CompletedProcess:
    """`python scripts/build_space.py ARGS`, as a user runs it, from outside the repository."""
    return subprocess.run([sys.executable, str(REPO / "scripts" / "build_space.py"), *args], cwd="/",
                          capture_output=True, text=True, timeout=GENEROUS_S)


def space_files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def git_lfs_files(folder: Path, files: list[str], scratch: Path) -> set[str]:
    """The files that git itself, reading folder/.gitattributes, would hand to the lfs filter.
    Asks `git check-attr` in a scratch repository holding only that .gitattributes."""
    scratch.mkdir()
    subprocess.run(["git", "init", "-q", str(scratch)], check=True)
    shutil.copyfile(folder / ".gitattributes", scratch / ".gitattributes")
    answer = subprocess.run(["git", "check-attr", "-z", "filter", "--stdin"], cwd=scratch, input="\0".join(files),
                            capture_output=True, text=True, check=True).stdout.split("\0")
    return {path for path, _, value in zip(answer[0::3], answer[1::3], answer[2::3]) if value == "lfs"}


@pytest.fixture(scope="module")
def tiny_space(tmp_path_factory, checkpoint_dir):
    """A Space built on the tiny checkpoints by the command, with all its checks (it starts the app)."""
    out = tmp_path_factory.mktemp("tiny-space") / "space"
    result = build(str(out), "--checkpoints", str(checkpoint_dir))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "checks passed" in result.stdout and "start:" in result.stdout
    return out


def test_the_space_holds_the_app_and_nothing_of_tests_docs_or_scripts(tiny_space):
    files = space_files(tiny_space)
    for needed in ("app.py", "README.md", "requirements.txt", ".gitattributes", "demo/explain.md",
                   "demo/handlers.py", "demo/zerogpu.py", "guidescope/__init__.py",
                   "checkpoints/fashion-mnist/unet.safetensors", "checkpoints/fashion-mnist/classifier.json"):
        assert needed in files
    assert not [f for f in files if f.split("/")[0] in ("tests", "docs", "scripts") or "__pycache__" in f]
    assert (tiny_space / "README.md").read_text() == (REPO / "README.md").read_text()


def test_a_rebuild_replaces_its_own_build_and_refuses_any_other_folder(tiny_space, checkpoint_dir, tmp_path, capsys):
    copy = tmp_path / "space"
    shutil.copytree(tiny_space, copy)
    (copy / "demo" / "stale.py").write_text("")
    manifest = json.loads((copy / build_space.MANIFEST).read_text())
    (copy / build_space.MANIFEST).write_text(json.dumps({**manifest, "files": [*manifest["files"], "demo/stale.py"]}))
    assert build_space.main([str(copy), "--checkpoints", str(checkpoint_dir), "--no-start"]) == 0
    rebuilt = space_files(copy)
    assert "demo/stale.py" not in rebuilt
    assert rebuilt == sorted([*json.loads((copy / build_space.MANIFEST).read_text())["files"], build_space.MANIFEST])

    assert build_space.main([str(copy), "--checkpoints", str(tmp_path / "not-there"), "--no-start"]) == 2
    assert "lacks" in capsys.readouterr().err and space_files(copy) == rebuilt
    (copy / "notes.txt").write_text("mine")
    assert build_space.main([str(copy), "--checkpoints", str(checkpoint_dir), "--no-start"]) == 2
    assert "did not write: notes.txt" in capsys.readouterr().err
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert build_space.main([str(foreign), "--no-start"]) == 2
    assert "not empty" in capsys.readouterr().err and space_files(foreign) == ["notes.txt"]
    assert build_space.main([str(REPO / "runs" / "space"), "--no-start"]) == 2
    assert "inside the repository" in capsys.readouterr().err and not (REPO / "runs" / "space").exists()


def test_check_only_reports_a_large_file_outside_lfs(tiny_space, tmp_path, capsys):
    copy = tmp_path / "space"
    shutil.copytree(tiny_space, copy)
    with open(copy / "demo" / "big.txt", "w") as f:
        f.write("x" * (build_space.LFS_LIMIT_BYTES + 1))
    assert build_space.main([str(copy), "--check-only", "--no-start"]) == 1
    assert "demo/big.txt" in capsys.readouterr().err


def test_the_space_alone_serves_generate(tiny_space):
    with running_app(None, timeout_s=GENEROUS_S, app_dir=tiny_space) as url:
        client = Client(url, verbose=False)
        parameters = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/generate"]
        names = {p["parameter_name"] for p in parameters["parameters"]}
        small = {name: value for name, value in dict(steps=2, num_images=1).items() if name in names}
        outputs = client.submit(**small, api_name="/generate").result(timeout=GENEROUS_S)
    images = [o for o in outputs if isinstance(o, str) and Path(o).is_file()]
    assert images
    with Image.open(images[0]) as image:
        assert image.format == "PNG"


def test_the_shipped_checkpoints_build_with_their_big_weights_in_lfs(tmp_path):
    out = tmp_path / "space"
    result = build(str(out), "--no-start")
    assert result.returncode == 0, result.stdout + result.stderr
    files = space_files(out)
    big = [f for f in files if (out / f).stat().st_size > build_space.LFS_LIMIT_BYTES]
    assert sorted(big) == sorted(BIG_WEIGHTS)
    assert "checkpoints/fashion-mnist-latent/autoencoder.safetensors" in files  # both shipped models
    assert "*.safetensors filter=lfs diff=lfs merge=lfs -text" in (out / ".gitattributes").read_text().splitlines()
    assert not [f for f in files if f.endswith(".log")]  # the training logs stay in the repository
    manifest = json.loads((out / build_space.MANIFEST).read_text())
    assert sorted(manifest["files"]) == sorted(f for f in files if f != build_space.MANIFEST)
    if shutil.which("git"):
        lfs = git_lfs_files(out, files, tmp_path / "scratch")
        assert set(big) <= lfs
        assert lfs == {f for f in files if build_space.stored_in_lfs(
            build_space.parse_gitattributes((out / ".gitattributes").read_text()), f)}


@pytest.mark.parametrize("pattern, path, expected", [
    ("*.safetensors", "checkpoints/fashion-mnist/unet.safetensors", True),
    ("*.safetensors", "unet.safetensors.bak", False),
    ("/big\\*.bin", "big*.bin", True),
    ("/big\\*.bin", "sub/big*.bin", False),
    ("docs/**", "docs/a/b.png", True),
    ("docs/**", "x/docs/a.png", False),
    ("a/**/b.q", "a/x/y/b.q", True),
    ("[!c]z.md", "q/az.md", True),
    ("[!c]z.md", "cz.md", False),
])
def test_gitattributes_patterns_match_as_git_matches_them(pattern, path, expected, tmp_path):
    rules = build_space.parse_gitattributes(f"{pattern} filter=lfs\n")
    assert build_space.stored_in_lfs(rules, path) is expected
    if shutil.which("git"):
        (tmp_path / "space").mkdir()
        (tmp_path / "space" / ".gitattributes").write_text(f"{pattern} filter=lfs\n")
        assert (path in git_lfs_files(tmp_path / "space", [path], tmp_path / "scratch")) is expected


def test_a_later_rule_that_unsets_the_filter_wins():
    rules = build_space.parse_gitattributes("*.dat filter=lfs\nsub/*.dat -filter\n")
    assert build_space.stored_in_lfs(rules, "a.dat") and not build_space.stored_in_lfs(rules, "sub/a.dat")

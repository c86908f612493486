"""The layout shows the architecture: the imports of the library package, every one of them (also
those inside functions), read with ast, run one way, up the floors below, with no circle; the
package's top level stays small, its networks and training in packages of their own; the app's
settings are written in one order, once."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "guidescope"

# Floors, bottom first: a module may import from its own floor (without a circle) or a lower one.
# A module's floor is that of the longest name here that it starts with.
FLOORS = (
    ("messages", "images", "noise", "metrics", "diffusion", "cli"),  # leaves: nothing of the package
    ("networks",),                                                   # nn.Modules and where they run
    ("guide", "samplers", "request", "parsing", "codec", "checkpoints"),  # the sampling core, the file format
    ("bundle", "generation"),                                        # the loaded pipeline, the entry point
    ("training",),
    ("evaluation",),
    ("sample", "convert", "train", "evaluate", "training.command", "evaluation.command"),  # command lines
)
MAX_TOP_LEVEL_MODULES = 18
SUBPACKAGES = ("networks", "training", "evaluation")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)  # "" is the package itself


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def floor(module: str) -> int:
    matches = [(len(name), k) for k, names in enumerate(FLOORS) for name in names
               if module == name or module.startswith(name + ".")]
    if not matches:
        raise AssertionError(f"guidescope.{module} is on no floor: add it to FLOORS in {Path(__file__).name}")
    return max(matches)[1]


def imports(module: str) -> set[str]:
    """The package's modules that `module` imports anywhere in its file (names relative to the package)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name.removeprefix("guidescope").lstrip(".") for a in node.names
                       if a.name.split(".")[0] == "guidescope"]
        elif isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").split(".")[0] == "guidescope"):
            if node.level:
                base = package.split(".") if package else []
                base = base[:len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module.removeprefix("guidescope").lstrip(".")
            # `from pkg import name` imports the module pkg.name where there is one, else pkg itself
            targets = [f"{source}.{a.name}".lstrip(".") if f"{source}.{a.name}".lstrip(".") in MODULES else source
                       for a in node.names]
        else:
            continue
        found.update(t for t in targets if t != module)
    return found


GRAPH = {module: imports(module) for module in MODULES}


def test_every_import_runs_down_or_along_a_floor():
    upward = [(f"{m} (floor {floor(m)})", f"{t} (floor {floor(t)})") for m, targets in GRAPH.items() if m
              for t in targets if t and floor(t) > floor(m)]
    assert not upward, upward


def test_no_import_circle():
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(GRAPH[module]):
            if state.get(target) == "open":
                raise AssertionError("import circle: " + " -> ".join(path[path.index(target):] + [module, target]))
            if target not in state:
                visit(target, path + [module])
        state[module] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [])


def test_the_walk_finds_a_circle_and_an_upward_import():
    """The two checks above can fail: a made-up graph with both is caught."""
    assert floor("networks.small") < floor("bundle")
    fake = {"bundle": {"networks.small"}, "networks.small": {"bundle"}}
    upward = [(m, t) for m, ts in fake.items() for t in ts if floor(t) > floor(m)]
    assert upward == [("networks.small", "bundle")]


def test_the_top_level_is_small_and_the_networks_and_training_are_packages():
    top = [m for m in MODULES if m and "." not in m and m not in SUBPACKAGES]
    assert len(top) <= MAX_TOP_LEVEL_MODULES, sorted(top)
    for package in SUBPACKAGES:
        assert (PACKAGE / package / "__init__.py").is_file()
    assert {"networks.registry", "networks.layers", "training.loop", "training.tasks"} <= set(MODULES)


@pytest.mark.parametrize("module", ["", "guide", "samplers", "diffusion", "request", "networks.small", "training.loop"])
def test_the_library_never_imports_the_app_or_gradio(module):
    tree = ast.parse(MODULES[module].read_text())
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module and not n.level}
    assert not names & {"gradio", "demo", "argparse"}


SETTINGS_ORDER = ("class_name", "scale", "unet", "cfg_scale", "steps", "sampler", "eta", "num_images", "seed",
                  "interval", "schedule", "threshold", "threshold_percentile")


def _word(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Starred):
        return _word(node.value)
    return None


def positional_lists(tree: ast.AST):
    """Every list of names whose order matters: a signature, a class's fields, a tuple or list, a
    call's positional arguments. (Keyword arguments travel by name.)"""
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield [a.arg for a in node.args.posonlyargs + node.args.args]
        elif isinstance(node, ast.ClassDef):
            yield [s.target.id for s in node.body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)]
        elif isinstance(node, (ast.Tuple, ast.List)):
            yield [_word(e) for e in node.elts]
        elif isinstance(node, ast.Call):
            yield [_word(a) for a in node.args]


def orders_written(source: str) -> int:
    """How many lists in source hold the settings' names in their order (other items between them
    allowed, as /compare's strengths and mode)."""
    def holds(names: list) -> bool:
        rest = iter(names)
        return all(name in rest for name in SETTINGS_ORDER)
    return sum(holds(names) for names in positional_lists(ast.parse(source)))


def test_the_settings_order_is_written_once():
    files = [*PACKAGE.rglob("*.py"), *(REPO / "demo").rglob("*.py"), *(REPO / "scripts").rglob("*.py"), REPO / "app.py"]
    written = {str(f.relative_to(REPO)): n for f in files if (n := orders_written(f.read_text()))}
    assert written == {"demo/settings.py": 1}
    # ...and the count sees an order written as a signature or a tuple, not as keywords
    assert orders_written("def f(live, " + ", ".join(SETTINGS_ORDER) + ", model): pass") == 1
    assert orders_written("x = (" + ", ".join(f"d.{name}" for name in SETTINGS_ORDER) + ")") == 1
    assert orders_written("f(" + ", ".join(f"{name}={name}" for name in SETTINGS_ORDER) + ")") == 0

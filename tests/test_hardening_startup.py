"""What the app does before it serves anyone: a missing, truncated, mismatched or pickled checkpoint
stops `python app.py` with a message naming the file and how to rebuild it (and a pickle is never
unpickled); the launch is local, private and capped unless asked otherwise; gradio is at a release
with the file-access and SSRF advisories fixed, and requirements.txt holds it there; and no
request string becomes a path."""
from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import gradio as gr
import pytest
import torch
from packaging.requirements import Requirement
from packaging.version import Version

from app_fixtures import bundle, checkpoint_dir, served_bundle  # noqa: F401
from demo import launch as launch_module
from demo.handlers import Handlers
from demo.settings import DISPLAY, SERVER
from guidescope.networks.backend import BackendError
from scripts.launcher import free_port

REPO = Path(__file__).resolve().parent.parent
FIXED_GRADIO = Version("6.20")  # releases before it carry known file-access and SSRF advisories
TRAIN_HINT = "python -m guidescope.train"


class Unpickled:
    """Unpickling this creates the file `marker`: proof that something unpickled it."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def _remove(path: Path, marker: Path) -> None:
    path.unlink()


def _truncate(path: Path, marker: Path) -> None:
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


def _widen(path: Path, marker: Path) -> None:
    """unet.json asks for twice the channels the weights have."""
    config_path = path.with_suffix(".json")
    meta = json.loads(config_path.read_text())
    meta["config"]["base_channels"] *= 2
    config_path.write_text(json.dumps(meta))


def _swap_in_classifier(path: Path, marker: Path) -> None:
    shutil.copy(path.with_name("classifier.safetensors"), path)


def _pickle(path: Path, marker: Path) -> None:
    """A torch.save pickle under the safetensors name, as a converted .pt file would be."""
    torch.save({"weight": torch.zeros(1), "payload": Unpickled(marker)}, path)


# case -> (file broken, how, what the message must say besides the file's path and the hints)
BROKEN = {
    "missing weights": ("unet.safetensors", _remove, "missing checkpoint weights"),
    "truncated weights": ("classifier.safetensors", _truncate, "unreadable checkpoint weights"),
    "config the weights do not fit": ("unet.safetensors", _widen, "do not fit the config"),
    "pickle under the safetensors name": ("unet.safetensors", _pickle, "unreadable checkpoint weights"),
    # These three run launch() in this process: the same code, without a Python start each.
    "missing config": ("classifier.json", _remove, "missing checkpoint config"),
    "classifier weights in the unet's place": ("unet.safetensors", _swap_in_classifier, "do not fit the config"),
    "missing folder": ("", None, "does not exist"),
}
THROUGH_APP_PY = list(BROKEN)[:4]


def broken_copy(checkpoint_dir: Path, root: Path, case: str) -> tuple[Path, Path, Path]:
    """(the checkpoint folder, the broken file, where a pickle payload would leave its marker)."""
    name, breaks, _ = BROKEN[case]
    folder, marker = root / "checkpoints", root / "unpickled"
    if breaks is not None:
        shutil.copytree(checkpoint_dir, folder)
        breaks(folder / name, marker)
    return folder, folder / name, marker


@pytest.fixture(scope="module")
def app_py_starts(checkpoint_dir, tmp_path_factory) -> dict[str, tuple[int, str, Path, Path]]:
    """`python app.py` on each THROUGH_APP_PY case: (exit code, stderr, broken file, pickle
    marker). All start at once, as each spends most of its few seconds importing torch."""
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    started = {}
    for case in THROUGH_APP_PY:
        folder, path, marker = broken_copy(checkpoint_dir, tmp_path_factory.mktemp("broken"), case)
        command = [sys.executable, "app.py", "--checkpoints", str(folder), "--port", str(free_port()),
                   "--threads", "1"]
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)
        started[case] = (process, path, marker)
    results = {}
    for case, (process, path, marker) in started.items():
        try:
            _, err = process.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
            _, err = process.communicate()
        results[case] = (process.returncode, err, path, marker)
    return results


def assert_names_the_file_and_the_rebuild(case: str, code: int, err: str, path: Path) -> None:
    assert code == 2, err[-2000:]
    assert str(path) in err and BROKEN[case][2] in err
    assert launch_module.REBUILD_DOC in err and "Traceback" not in err and "Running on" not in err
    if path.suffix:  # a file, not the folder: the library names the command that rebuilds that network
        assert TRAIN_HINT in err


@pytest.mark.parametrize("case", THROUGH_APP_PY)
def test_a_broken_checkpoint_stops_app_py_naming_the_file_and_the_rebuild(app_py_starts, case):
    code, err, path, _ = app_py_starts[case]
    assert_names_the_file_and_the_rebuild(case, code, err, path)


@pytest.mark.parametrize("case", list(BROKEN)[4:])
def test_more_broken_checkpoints_stop_the_launch_the_same_way(checkpoint_dir, tmp_path, capsys, case):
    folder, path, _ = broken_copy(checkpoint_dir, tmp_path, case)
    code = launch_module.launch(launch_module.parse_args(["--checkpoints", str(folder), "--threads", "1"]))
    assert_names_the_file_and_the_rebuild(case, code, capsys.readouterr().err, path)


def test_a_pickle_in_place_of_safetensors_is_never_unpickled(app_py_starts, tmp_path):
    *_, marker = app_py_starts["pickle under the safetensors name"]
    assert not marker.exists()  # app.py never ran the payload
    with pickle.loads(pickle.dumps(Unpickled(tmp_path / "marker"))):  # which does run when unpickled
        assert (tmp_path / "marker").exists()


# -- how the server is launched ---------------------------------------------------------------------

@pytest.fixture()
def launched(monkeypatch, checkpoint_dir):
    """launch() as app.py runs it, with Blocks.launch recording its arguments instead of serving.
    Returns a function of the command line giving (the Blocks, the launch keyword arguments)."""
    for name in ("GRADIO_SERVER_NAME", "GRADIO_SERVER_PORT"):
        monkeypatch.delenv(name, raising=False)
    calls = []
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kwargs: calls.append((self, kwargs)))
    threads = torch.get_num_threads()

    def run(*argv: str):
        assert launch_module.launch(launch_module.parse_args(["--checkpoints", str(checkpoint_dir), *argv])) == 0
        return calls[-1]

    yield run
    torch.set_num_threads(threads)


def test_the_server_is_local_private_and_capped_unless_asked(launched):
    demo, kwargs = launched()
    assert kwargs["server_name"] == "127.0.0.1" and kwargs["share"] is False
    assert not kwargs.get("allowed_paths")  # nothing beyond the app's own outputs is served
    assert kwargs["max_file_size"] == SERVER.max_file_size
    assert gr.FileSize.MB <= _bytes(SERVER.max_file_size) <= 10 * gr.FileSize.MB
    assert kwargs.get("show_error") is False  # unexpected exceptions reach callers without their text
    assert not kwargs.get("auth") and not kwargs.get("mcp_server")
    _, asked = launched("--host", "0.0.0.0", "--share")
    assert asked["server_name"] == "0.0.0.0" and asked["share"] is True


def _bytes(size: str) -> int:
    number, unit = re.fullmatch(r"(\d+)\s*([kmg]b)", size.lower()).groups()
    return int(number) * {"kb": gr.FileSize.KB, "mb": gr.FileSize.MB, "gb": gr.FileSize.GB}[unit]


def _handlers(demo: gr.Blocks):
    return next(fn.fn.__self__ for fn in demo.fns.values() if fn.api_name == "generate")


def _info(demo: gr.Blocks) -> str:
    return next(block.value for block in demo.blocks.values() if getattr(block, "elem_id", None) == "info")


def test_the_backend_and_the_frame_interval_reach_the_app(launched, served_bundle):
    demo, _ = launched()
    assert f"UNet on {served_bundle.backend}" in _info(demo)  # the default backend, auto
    assert _handlers(demo).display.frame_interval_s == DISPLAY.frame_interval_s
    demo, _ = launched("--backend", "torch", "--frame-interval", "0")
    assert "UNet on torch" in _info(demo) and _handlers(demo).bundle.backend == "torch"
    assert _handlers(demo).display.frame_interval_s == 0


def test_a_backend_that_cannot_run_stops_the_launch(checkpoint_dir, monkeypatch, capsys):
    def unavailable(*args, **kwargs):
        raise BackendError("ONNX Runtime is not installed; install it")

    monkeypatch.setattr(launch_module, "load_bundle", unavailable)
    args = launch_module.parse_args(["--checkpoints", str(checkpoint_dir), "--backend", "onnx", "--threads", "1"])
    assert launch_module.launch(args) == 2
    err = capsys.readouterr().err
    assert "ONNX Runtime is not installed" in err and "Traceback" not in err


def test_sampling_is_queued_with_a_concurrency_limit_and_a_maximum_size(launched):
    demo, _ = launched()
    assert demo._queue.max_size == SERVER.max_queue
    sampling = [fn for fn in demo.fns.values() if fn.api_name in ("generate", "compare")]
    assert len(sampling) == 2
    assert {(fn.concurrency_id, fn.concurrency_limit, fn.queue) for fn in sampling} == {
        ("sampling", SERVER.concurrency_limit, True)}
    demo, _ = launched("--concurrency", "2")
    assert {fn.concurrency_limit for fn in demo.fns.values() if fn.concurrency_id == "sampling"} == {2}


@pytest.mark.parametrize("concurrency", [1, 2])
def test_torch_threads_share_the_cores_between_concurrent_runs(launched, concurrency):
    launched("--concurrency", str(concurrency))
    assert torch.get_num_threads() == max(1, (os.cpu_count() or 1) // concurrency)


# -- gradio release -------------------------------------------------------------------------------

def test_gradio_is_at_a_release_with_the_advisories_fixed():
    assert Version(gr.__version__) >= FIXED_GRADIO
    pins = [Requirement(line) for line in (REPO / "requirements.txt").read_text().splitlines()
            if re.match(r"gradio\b", line.strip())]
    assert len(pins) == 1 and pins[0].name == "gradio"
    assert pins[0].specifier.contains(gr.__version__)
    assert not pins[0].specifier.contains("6.19.99") and not pins[0].specifier.contains("5.50")


def test_the_space_runs_the_release_requirements_txt_allows():
    """Spaces install gradio from the README's sdk_version, not from requirements.txt."""
    front = (REPO / "README.md").read_text().split("---")[1]
    sdk = re.search(r"^sdk_version:\s*([\d.]+)", front, re.MULTILINE)
    if sdk is None:
        pytest.skip("the README declares no Space sdk_version")
    assert Version(sdk[1]) >= FIXED_GRADIO


# -- request strings never become paths ------------------------------------------------------------

@pytest.mark.parametrize("class_name", ["../../etc/passwd", "/etc/passwd", "..", "Bag/../../x", "Bag\x00"])
def test_a_class_name_that_looks_like_a_path_is_refused(bundle, tmp_path, class_name):
    handlers = Handlers(bundle, downloads=tmp_path / "downloads")
    with pytest.raises(gr.Error, match="class must be one of"):
        next(handlers.generate(class_name, 1.0, "unconditional", 0.0, 2, "ddim", 0.0, 1, 0))


def test_downloads_are_named_by_the_server_inside_its_own_folder(bundle, tmp_path):
    """A class name with a slash in it (Fashion-MNIST has "T-shirt/top") still yields a plain file
    name in the downloads folder."""
    handlers = Handlers(bundle, downloads=tmp_path / "downloads")
    *_, last = handlers.generate("T-shirt/top", 1.0, "unconditional", 0.0, 2, "ddim", 0.0, 1, 0)
    after = handlers.playback.finish(last.recording)
    files = [Path(update["value"]) for update in after[1:3] if update.get("value")]
    assert len(files) == 2
    for file in files:
        assert file.parent == handlers.playback.downloads.folder and "/" not in file.name and ".." not in file.name
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == sorted(f.name for f in files)

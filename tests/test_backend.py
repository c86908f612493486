"""The UNet's inference backends: ONNX Runtime gives torch's eps, the exported graph is cached by
weights, and a missing runtime falls back to torch under "auto" but fails clearly when named."""
import logging
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from conftest import tiny_unet

from guidescope.checkpoints import load
from guidescope.networks import backend
from guidescope.networks.backend import BACKENDS, BackendError, select_unet

SHIPPED = Path(__file__).resolve().parents[1] / "checkpoints" / "fashion-mnist"
TOLERANCE = 1e-4


def inputs(cfg, batch: int, seed: int = 0):
    """x_t (B, C, H, W) at the scale of noisy images, timesteps over the whole schedule, labels
    including the null label."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg.in_channels, cfg.image_size, cfg.image_size, generator=gen)
    t = torch.randint(0, 1000, (batch,), generator=gen)
    y = torch.randint(0, cfg.num_classes + 1, (batch,), generator=gen)
    return x, t, y


def torch_eps(unet, x, t, y):
    with torch.no_grad():
        return unet(x, t, y)


def max_diff(runner, unet, batch: int, seed: int = 0) -> float:
    x, t, y = inputs(unet.config, batch, seed)
    with torch.no_grad():
        eps = runner(x, t, y)
    assert eps.shape == x.shape and eps.dtype == torch.float32
    return (eps - torch_eps(unet, x, t, y)).abs().max().item()


@pytest.fixture
def count_exports(monkeypatch):
    calls = []
    real = backend.export_onnx

    def counting(unet, path):
        calls.append(Path(path))
        return real(unet, path)

    monkeypatch.setattr(backend, "export_onnx", counting)
    return calls


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    if not (SHIPPED / "unet.safetensors").is_file():
        pytest.skip("no shipped checkpoint")
    unet, _ = load(SHIPPED, "unet")
    return unet, select_unet(unet, "onnx", cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.mark.parametrize("batch", [1, 16])
def test_onnx_matches_torch_on_random_weights(tmp_path, batch):
    unet = tiny_unet()
    runner = select_unet(unet, "onnx", cache_dir=tmp_path)
    assert runner.backend == "onnxruntime" and runner.config == unet.config
    assert runner.null_label == unet.null_label
    assert max_diff(runner, unet, batch) < TOLERANCE


@pytest.mark.parametrize("batch", [1, 16])
def test_onnx_matches_torch_on_shipped_weights(shipped, batch):
    unet, runner = shipped
    assert runner.backend == "onnxruntime"
    assert max_diff(runner, unet, batch) < TOLERANCE


def test_batch_size_is_not_fixed_by_the_export(tmp_path):
    unet = tiny_unet()
    runner = select_unet(unet, "onnx", cache_dir=tmp_path)
    for batch in (2, 3, 250):
        assert max_diff(runner, unet, batch, seed=batch) < TOLERANCE


def test_second_call_loads_the_cached_graph(tmp_path, count_exports):
    unet = tiny_unet()
    select_unet(unet, "onnx", cache_dir=tmp_path)
    assert len(count_exports) == 1
    (path,) = tmp_path.glob("*.onnx")
    written = path.stat().st_mtime_ns
    runner = select_unet(tiny_unet(), "onnx", cache_dir=tmp_path)  # same weights, another module
    assert len(count_exports) == 1 and path.stat().st_mtime_ns == written
    assert max_diff(runner, unet, 4) < TOLERANCE
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind


def test_new_weights_get_a_new_graph(tmp_path, count_exports):
    unet = tiny_unet()
    select_unet(unet, "onnx", cache_dir=tmp_path)
    changed = tiny_unet()
    with torch.no_grad():
        changed.out[-1].bias.add_(0.5)
    runner = select_unet(changed, "onnx", cache_dir=tmp_path)
    assert len(count_exports) == 2 and count_exports[0] != count_exports[1]
    assert len(list(tmp_path.glob("*.onnx"))) == 2
    assert max_diff(runner, changed, 4) < TOLERANCE
    assert max_diff(runner, unet, 4) > 0.4  # the old graph would be off by the 0.5 bias


def test_cache_location_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(backend.CACHE_ENV, str(tmp_path / "env"))
    assert backend.cache_folder() == tmp_path / "env"
    assert backend.cache_folder(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv(backend.CACHE_ENV)
    assert backend.cache_folder() == backend.DEFAULT_CACHE


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    def refuse(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="disk full"):
        backend.export_onnx(tiny_unet(), tmp_path / "unet.onnx")
    assert list(tmp_path.iterdir()) == []


def test_corrupt_cache_file_is_exported_again(tmp_path, count_exports, caplog):
    unet = tiny_unet()
    path = backend.cached_onnx(unet, tmp_path)
    path.write_bytes(b"half a graph")
    with caplog.at_level(logging.WARNING, logger="guidescope.networks.backend"):
        runner = select_unet(unet, "onnx", cache_dir=tmp_path)
    assert "exporting it again" in caplog.text and len(count_exports) == 2
    assert max_diff(runner, unet, 2) < TOLERANCE


def test_missing_runtime_falls_back_to_torch_under_auto(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    unet = tiny_unet()
    with caplog.at_level(logging.WARNING, logger="guidescope.networks.backend"):
        runner = select_unet(unet, "auto", cache_dir=tmp_path)
    assert runner.backend == "torch" and runner.unet is unet
    assert "ONNX Runtime is not installed" in caplog.text
    assert "ONNX Runtime is not installed" in runner.reason
    assert list(tmp_path.iterdir()) == []  # nothing exported for a runtime that is not there
    x, t, y = inputs(unet.config, 3)
    assert torch.equal(torch_eps(runner, x, t, y), torch_eps(unet, x, t, y))


def test_missing_runtime_is_an_error_when_named(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(BackendError, match=r"not installed.*pip install onnxruntime.*--backend torch"):
        select_unet(tiny_unet(), "onnx", cache_dir=tmp_path)
    assert issubclass(BackendError, RuntimeError)


def test_failed_export_falls_back_or_fails(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "onnx", None)  # the exporter needs the onnx package
    with pytest.raises(BackendError, match=r"exporting the UNet to ONNX failed.*pip install onnxruntime onnx"):
        select_unet(tiny_unet(), "onnx", cache_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="guidescope.networks.backend"):
        runner = select_unet(tiny_unet(), "auto", cache_dir=tmp_path)
    assert runner.backend == "torch" and "exporting the UNet to ONNX failed" in caplog.text
    assert not list(tmp_path.glob("*.onnx"))


def test_torch_is_kept_when_asked_or_off_the_cpu(tmp_path, count_exports):
    unet = tiny_unet()
    for name, device in [("torch", "cpu"), ("onnx", "cuda"), ("auto", "cuda:0")]:
        runner = select_unet(unet, name, device=device, cache_dir=tmp_path)
        assert runner.backend == "torch" and runner.unet is unet and runner.reason
        assert runner.config == unet.config and runner.null_label == unet.null_label
    assert count_exports == []


def test_unknown_backend_names_the_choices():
    with pytest.raises(ValueError, match="auto, torch, onnx"):
        select_unet(tiny_unet(), "tensorrt")
    assert BACKENDS == ("auto", "torch", "onnx")


def test_session_uses_torch_thread_count_without_spinning(tmp_path):
    runner = select_unet(tiny_unet(), "onnx", cache_dir=tmp_path)
    options = runner.session.get_session_options()
    assert options.intra_op_num_threads == torch.get_num_threads() and options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_runner_is_safe_from_threads_and_with_gradients(tmp_path):
    unet = tiny_unet()
    runner = select_unet(unet, "onnx", cache_dir=tmp_path)
    batches = [inputs(unet.config, 8, seed) for seed in range(8)]
    expected = [torch_eps(unet, *batch) for batch in batches]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda batch: runner(*batch), batches))
    for eps, ref in zip(got, expected):
        assert (eps - ref).abs().max().item() < TOLERANCE
    x, t, y = batches[0]
    eps = runner(x.clone().requires_grad_(True), t, y)  # inputs that carry a graph are read, not differentiated
    assert not eps.requires_grad and (eps - expected[0]).abs().max().item() < TOLERANCE


def test_float64_weights_stay_in_torch(tmp_path):
    unet = tiny_unet().double()
    with pytest.raises(BackendError, match="float32"):
        select_unet(unet, "onnx", cache_dir=tmp_path)
    assert select_unet(unet, "auto", cache_dir=tmp_path).backend == "torch"
    assert list(tmp_path.iterdir()) == []

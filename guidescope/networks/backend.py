"""Where the UNet's forward pass runs on a CPU: eager torch, or ONNX Runtime on a graph exported
from the loaded weights.

On two quiet CPU cores ONNX Runtime runs the shipped UNet's forward pass at batch 16 in about 54 ms
against eager torch's 91 ms, with the same eps to ~1e-5; OpenVINO is no faster, and on a loaded
machine it is 1.4-1.6x slower than ONNX Runtime (scripts/benchmark_backend.py measures all three).
Only the UNet moves: the classifier stays in torch, because guidance needs its gradient with
respect to x_t.

The exported graph is cached outside the repository, in cache_dir, $GUIDANCE_CACHE or
~/.cache/classifier-guidescope/, under a name keyed by a hash of the weights, the config and the
torch version, so new weights get a new graph and unchanged weights are exported only once.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from .small import UNetConfig

BACKENDS = ("auto", "torch", "onnx")
CACHE_ENV = "GUIDANCE_CACHE"
DEFAULT_CACHE = Path.home() / ".cache" / "classifier-guidance"
EXPORT_FORMAT = 1   # part of the cache key: bump it when the export changes, so old graphs are not reused
OPSET = 17          # 18-20 give this UNet the same graph (GroupNorm as InstanceNormalization); older runtimes load 17
INSTALL_HINT = ("install it with `pip install onnxruntime onnx` (see requirements.txt), "
                "or use backend 'torch' (--backend torch)")

log = logging.getLogger("guidescope.networks.backend")


class BackendError(RuntimeError):
    """The requested inference backend cannot run the UNet: its package is missing, or the export
    or the loading of the exported graph failed."""


class UNetRunner:
    """eps_theta(x_t, t, y) on some backend: x_t (B, C, H, W) float32, t (B,) int64 original timesteps,
    y (B,) int64 labels with null_label for "no class" -> eps (B, C, H, W) float32.

    backend names what runs the forward pass ("torch", "onnxruntime"); reason says why it was chosen.
    """
    backend = ""

    def __init__(self, config: UNetConfig, reason: str):
        self.config, self.reason = config, reason

    @property
    def null_label(self) -> int:
        return self.config.num_classes

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(backend={self.backend!r}, reason={self.reason!r})"


class TorchRunner(UNetRunner):
    """The torch UNet itself, on whatever device it lives; gradients flow as in the module."""
    backend = "torch"

    def __init__(self, unet: nn.Module, reason: str):
        super().__init__(unet.config, reason)
        self.unet = unet

    @property
    def null_label(self) -> int | None:
        return self.unet.null_label

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t, y)


class OnnxRuntimeRunner(UNetRunner):
    """An ONNX Runtime session on the exported graph; CPU tensors in and out, never a gradient.
    Safe to call from several threads at once (InferenceSession.run is)."""
    backend = "onnxruntime"

    def __init__(self, session, config: UNetConfig, reason: str):
        super().__init__(config, reason)
        self.session = session

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        feeds = {"x": _numpy(x, torch.float32), "t": _numpy(t, torch.int64), "y": _numpy(y, torch.int64)}
        return torch.from_numpy(self.session.run(["eps"], feeds)[0])


def _numpy(v: torch.Tensor, dtype: torch.dtype):
    return v.detach().to("cpu", dtype).contiguous().numpy()


def weights_key(unet: nn.Module) -> str:
    """sha256 (hex) over the config JSON, the torch version, the export format and every state-dict
    tensor's name, dtype, shape and bytes: equal keys mean the same exported graph."""
    digest = hashlib.sha256()
    header = {"config": asdict(unet.config), "torch": torch.__version__, "format": EXPORT_FORMAT, "opset": OPSET}
    digest.update(json.dumps(header, sort_keys=True).encode())
    for name, tensor in unet.state_dict().items():
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        # Bytes through uint8, which numpy can hold whatever the dtype (bfloat16 included).
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def cache_folder(cache_dir: str | Path | None = None) -> Path:
    """cache_dir, else $GUIDANCE_CACHE, else ~/.cache/classifier-guidescope/."""
    return Path(cache_dir or os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


def export_onnx(unet: nn.Module, path: str | Path) -> Path:
    """Write unet's forward pass (x, t, y) -> eps as an ONNX graph with a dynamic batch axis to path.
    The file appears whole or not at all (written beside it, then renamed), so a process loading it
    while another exports never reads half a graph."""
    path = Path(path)
    cfg = unet.config
    param = next(unet.parameters())
    # Batch 2, not 1: a traced size of 1 could be taken for a broadcast and fixed in the graph.
    x = torch.zeros(2, cfg.in_channels, cfg.image_size, cfg.image_size, dtype=param.dtype, device=param.device)
    t = torch.zeros(2, dtype=torch.long, device=param.device)
    y = torch.full_like(t, cfg.num_classes)  # the null label
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter exports this UNet in about a second, where the torch.export-based
        # one takes 15-20 s on two cores; it warns that it is deprecated, and that the attention's
        # q, k, v unpacking iterates over a tensor (over its fixed first axis, so the trace holds).
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(unet, (x, t, y), buffer, dynamo=False, opset_version=OPSET,
                          input_names=["x", "t", "y"], output_names=["eps"],
                          dynamic_axes={name: {0: "batch"} for name in ("x", "t", "y", "eps")})
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buffer.getvalue())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache may serve other users' processes
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def cached_onnx(unet: nn.Module, cache_dir: str | Path | None = None, refresh: bool = False) -> Path:
    """The exported graph of unet in the cache (see cache_folder), exported first when not there
    (or when refresh)."""
    path = cache_folder(cache_dir) / f"unet-{weights_key(unet)[:32]}.onnx"
    if refresh or not path.is_file():
        start = time.perf_counter()
        export_onnx(unet, path)
        log.info("exported the UNet to %s in %.1f s", path, time.perf_counter() - start)
    return path


def onnxruntime_session(path: str | Path, threads: int | None = None, spinning: bool = False):
    """A CPU InferenceSession on path with threads intra-op threads (default: torch's count) that
    sleep when idle unless spinning."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Idle workers would otherwise spin for a while after each call, holding cores that the
    # classifier's forward and backward pass in torch, which runs next, then cannot use.
    for pool in ("intra_op", "inter_op"):
        options.add_session_config_entry(f"session.{pool}.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _onnxruntime_runner(unet: nn.Module, cache_dir: str | Path | None) -> OnnxRuntimeRunner:
    try:
        import onnxruntime  # noqa: F401  (fail here, before any export, when it is missing)
    except ImportError as err:
        raise BackendError(f"ONNX Runtime is not installed ({err}); {INSTALL_HINT}") from err
    dtype = next(unet.parameters()).dtype
    if dtype != torch.float32:
        raise BackendError(f"the ONNX Runtime backend runs float32 weights, these are {dtype}; "
                           "use backend 'torch' (--backend torch)")
    try:
        path = cached_onnx(unet, cache_dir)
    except Exception as err:
        raise BackendError(f"exporting the UNet to ONNX failed ({type(err).__name__}: {err}); {INSTALL_HINT}") from err
    try:
        session = onnxruntime_session(path)
    except Exception as first:
        # A cache file from elsewhere (another ONNX Runtime, a damaged disk): export once more.
        log.warning("could not load the cached graph %s (%s); exporting it again", path, first)
        try:
            session = onnxruntime_session(cached_onnx(unet, cache_dir, refresh=True))
        except Exception as err:
            raise BackendError(f"ONNX Runtime could not load the exported UNet {path} ({type(err).__name__}: "
                               f"{err}); use backend 'torch' (--backend torch)") from err
    return OnnxRuntimeRunner(session, unet.config, f"ONNX Runtime on {path.name}, {torch.get_num_threads()} threads")


def select_unet(unet: nn.Module, backend: str = "auto", device="cpu",
                cache_dir: str | Path | None = None) -> UNetRunner:
    """A runner for unet's eps prediction, runner(x_t (B, C, H, W), t (B,), y (B,)) -> eps (B, C, H, W).

    "torch" (or a non-CPU device, where torch is kept) wraps the module itself. "onnx" exports the
    weights once (cached, see cache_folder) and runs them in ONNX Runtime with torch's intra-op
    thread count, raising BackendError when it cannot. "auto" tries "onnx" and falls back to torch,
    logging why on the "guidescope.networks.backend" logger; runner.reason keeps that reason.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if torch.device(device).type != "cpu":
        return TorchRunner(unet, f"torch on {device}: the runtimes here are for CPUs")
    if backend == "torch":
        return TorchRunner(unet, "backend 'torch' requested")
    if not isinstance(unet.config, UNetConfig):
        reason = f"the ONNX export covers this project's UNet, not {type(unet).__name__}"
        if backend == "onnx":
            raise BackendError(f"{reason}; use backend 'torch' (--backend torch)")
        return TorchRunner(unet, f"torch: {reason}")
    try:
        return _onnxruntime_runner(unet, cache_dir)
    except BackendError as err:
        if backend == "onnx":
            raise
        log.warning("running the UNet in torch instead of ONNX Runtime: %s", err)
        return TorchRunner(unet, f"fell back to torch: {err}")

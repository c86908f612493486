"""Time the UNet's forward pass on each CPU backend: eager torch, ONNX Runtime and OpenVINO.

    python scripts/benchmark_backend.py [--checkpoints checkpoints/fashion-mnist] [--threads 2]

Prints the 1-minute load average first (with a warning above 0.5, when other processes distort the
figures), then per batch size the median ms per forward pass of each backend, its speed-up over
torch and the max |eps - eps_torch|. Backends run interleaved within each repeat, so load from
other processes falls on all of them alike and the ratios stay comparable. ONNX Runtime runs as
guidescope.networks.backend.select_unet sets it up (idle threads sleep), and once more with spinning threads;
OpenVINO, when installed, runs the same exported graph in f32. The exported graph goes to the usual
cache (see guidescope.networks.backend.cache_folder).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from guidescope.checkpoints import load  # noqa: E402
from guidescope.cli import configure  # noqa: E402
from guidescope.networks.backend import OnnxRuntimeRunner, cached_onnx, onnxruntime_session, select_unet  # noqa: E402
from scripts.machine import load_average, load_line  # noqa: E402


class OpenVinoRunner:
    """The exported graph compiled by OpenVINO for the CPU in f32 (it would pick bf16 on CPUs that
    have it, which is not the same eps), one latency stream with the given threads."""

    def __init__(self, path: Path, threads: int):
        import openvino

        core = openvino.Core()
        config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
                  "INFERENCE_PRECISION_HINT": "f32"}
        self.request = core.compile_model(core.read_model(str(path)), "CPU", config).create_infer_request()

    def __call__(self, x, t, y):
        self.request.infer({"x": x.numpy(), "t": t.numpy(), "y": y.numpy()})
        return torch.from_numpy(self.request.get_output_tensor(0).data.copy())


def runners(unet, threads: int, cache_dir) -> dict:
    """name -> callable (x, t, y) -> eps, for every backend installed here."""
    found = {"torch": select_unet(unet, "torch")}
    try:
        found["onnxruntime"] = select_unet(unet, "onnx", cache_dir=cache_dir)
    except RuntimeError as err:
        print(f"ONNX Runtime skipped: {err}")
        return found
    path = cached_onnx(unet, cache_dir)
    found["onnxruntime+spin"] = OnnxRuntimeRunner(onnxruntime_session(path, threads, spinning=True), unet.config,
                                                  "spinning threads, for comparison")
    try:
        found["openvino"] = OpenVinoRunner(path, threads)
    except ImportError as err:
        print(f"OpenVINO skipped: {err}")
    return found


def inputs(cfg, batch: int):
    gen = torch.Generator().manual_seed(batch)
    return (torch.randn(batch, cfg.in_channels, cfg.image_size, cfg.image_size, generator=gen),
            torch.randint(0, 1000, (batch,), generator=gen),
            torch.randint(0, cfg.num_classes + 1, (batch,), generator=gen))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoints", default="checkpoints/fashion-mnist")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for every backend (default 2)")
    p.add_argument("--batch-sizes", default="1,8,16,40,80")
    p.add_argument("--repeats", type=int, default=15, help="timed calls per backend and batch size; the median counts")
    p.add_argument("--cache-dir", help="where the exported graph is cached (default: guidescope.networks.backend's cache)")
    args = p.parse_args(argv)
    print(load_line(load_average(), advice="other processes are running; trust ratios more than ms"))
    configure("cpu", args.threads)
    unet, _ = load(args.checkpoints, "unet")
    found = runners(unet, args.threads, args.cache_dir)
    print(f"torch {torch.__version__}, {args.threads} threads, median of {args.repeats}; {args.checkpoints}/unet")
    print(f"{'batch':>5}  " + "  ".join(f"{name:>23}" for name in found) + "   (ms, x torch, max |diff|)")
    with torch.no_grad():
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            x, t, y = inputs(unet.config, batch)
            reference = unet(x, t, y)
            diffs = {name: (run(x, t, y) - reference).abs().max().item() for name, run in found.items()}  # and warm up
            times = {name: [] for name in found}
            for _ in range(args.repeats):
                for name, run in found.items():
                    start = time.perf_counter()
                    run(x, t, y)
                    times[name].append(time.perf_counter() - start)
            ms = {name: 1000 * statistics.median(v) for name, v in times.items()}
            print(f"{batch:>5}  " + "  ".join(f"{ms[n]:>7.1f} {ms['torch'] / ms[n]:>5.2f}x {diffs[n]:>8.1e}"
                                             for n in found), flush=True)
    print(load_line(load_average(), "end", advice=None))
    return 0


if __name__ == "__main__":
    sys.exit(main())

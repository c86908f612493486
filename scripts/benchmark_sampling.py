"""Time sampling steps through the library's entry point (guidescope.generation.stream), per guidance
mode, batch size and UNet backend.

    python scripts/benchmark_sampling.py [--checkpoints checkpoints/fashion-mnist] [--threads 2]

Modes: unguided; classifier guidance; classifier-free guidance (conditional UNet with w_cfg);
and "classifier vs free", a batch of half classifier rows (unconditional UNet) and half
classifier-free rows, as the app's Compare runs it: the unconditional rows run one UNet pass and
the classifier-free rows two, so its UNet rows per step are 1.5 x the batch.

Prints ms per sampling step, the ratio to unguided on the same backend, the share of the loop
spent outside the networks (measured by wrappers around the UNet and classifier calls, backward
pass included) and, per backend, the speed-up over eager torch. Each figure is the fastest of
--repeats runs, modes and backends interleaved, since other load only adds time. The 1-minute
load average is printed first: figures taken on a busy machine are not figures.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from demo.settings import DEFAULTS  # noqa: E402
from guidescope.bundle import Bundle, load_bundle  # noqa: E402
from guidescope.cli import configure  # noqa: E402
from guidescope.generation import stream  # noqa: E402
from guidescope.request import Request, Row  # noqa: E402
from scripts.machine import load_average, load_line  # noqa: E402


def modes(batch: int) -> dict[str, tuple[Row, ...]]:
    """Rows per mode for a batch of `batch` images (one image per row: every row is its own stream)."""
    half = batch // 2
    return {
        "unguided": (Row(0),) * batch,
        "classifier": (Row(0, 5.0),) * batch,
        "cfg": (Row(0, 0.0, 2.0),) * batch,
        "classifier vs free": (Row(0, 5.0),) * half + (Row(0, 0.0, 5.0),) * (batch - half),
    }


class Timed:
    """Calls a network and adds its wall time, forward and (when a gradient flows back through
    it to its input) backward, to a shared clock. Other attributes pass through (config, ...)."""

    def __init__(self, net, clock: list):
        self.net, self.clock = net, clock
        self.backward_start = 0.0

    def __getattr__(self, name):
        return getattr(self.net, name)

    def __call__(self, x, *args):
        start = time.perf_counter()
        out = self.net(x, *args)
        self.clock[0] += time.perf_counter() - start
        if x.requires_grad and out.requires_grad:
            out.register_hook(self._gradient_reaches_output)
            x.register_hook(self._gradient_reaches_input)
        return out

    def _gradient_reaches_output(self, grad):
        self.backward_start = time.perf_counter()

    def _gradient_reaches_input(self, grad):
        self.clock[0] += time.perf_counter() - self.backward_start


def measure(bundle: Bundle, rows: tuple[Row, ...], steps: int, sampler: str) -> tuple[float, float]:
    """(ms per step, share of time outside the networks) of one run."""
    clock = [0.0]
    timed = dataclasses.replace(bundle, unet=Timed(bundle.unet, clock), classifier=Timed(bundle.classifier, clock))
    request = Request(rows, images_per_row=1, steps=steps, sampler=sampler)
    start = time.perf_counter()
    for _ in stream(timed, request, diagnostics=False):
        pass
    total = time.perf_counter() - start
    return 1000 * total / steps, (total - clock[0]) / total


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoints", default="checkpoints/fashion-mnist")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--backends", default="torch,auto", help="UNet backends to compare (guidescope.networks.backend)")
    p.add_argument("--batch-sizes", default="8,16,40")
    p.add_argument("--steps", type=int, default=10, help="timed sampling steps per measurement")
    p.add_argument("--repeats", type=int, default=3, help="runs per measurement; the fastest counts")
    p.add_argument("--sampler", default=DEFAULTS.sampler, help=f"default: the app's ({DEFAULTS.sampler})")
    p.add_argument("--out", help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    configure("cpu", args.threads)
    load = load_average()
    bundles = {name: load_bundle(args.checkpoints, "cpu", backend=name) for name in args.backends.split(",")}
    print(load_line(load))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.sampler}, {args.steps} steps, "
          f"fastest of {args.repeats}; checkpoints {args.checkpoints}; backends: "
          + ", ".join(f"{name} = {b.backend}" for name, b in bundles.items()))
    print(f"{'batch':>5}  {'mode':<18}  {'backend':<12}  {'ms/step':>8}  {'x unguided':>10}  {'x torch':>7}  {'outside networks':>16}")
    rows = []
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        best: dict[tuple[str, str], tuple[float, float]] = {}
        for bundle in bundles.values():  # warm-up: first calls allocate and compile
            measure(bundle, modes(batch)["classifier"], 2, args.sampler)
        for _ in range(args.repeats):
            for mode, mode_rows in modes(batch).items():
                for name, bundle in bundles.items():
                    ms, outside = measure(bundle, mode_rows, args.steps, args.sampler)
                    if (mode, name) not in best or ms < best[mode, name][0]:
                        best[mode, name] = (ms, outside)
        for (mode, name), (ms, outside) in best.items():
            row = {"batch": batch, "mode": mode, "backend": bundles[name].backend, "ms_per_step": ms,
                   "ratio_to_unguided": ms / best["unguided", name][0],
                   "speedup_over_torch": best[mode, "torch"][0] / ms if ("unguided", "torch") in best else None,
                   "outside_networks": outside}
            rows.append(row)
            speedup = "" if row["speedup_over_torch"] is None else f"{row['speedup_over_torch']:.2f}"
            print(f"{batch:>5}  {mode:<18}  {row['backend']:<12}  {ms:>8.1f}  {row['ratio_to_unguided']:>10.2f}  "
                  f"{speedup:>7}  {100 * outside:>15.1f}%", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"load_average": load, "threads": torch.get_num_threads(),
                                              "sampler": args.sampler, "steps": args.steps, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

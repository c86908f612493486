"""Time per image and per step of training-free guidance, each method beside the noise-aware
default, on each bundle, in one run; and how far from the FLOP floor each runs.

    python scripts/benchmark_training_free.py [--checkpoints DIR ...] [--batch 8] [--threads 2]
                                              [--repeats 3] [--out docs/TRAINING_FREE_SPEED.md]

Per bundle: its noise-aware default and its training-free default (defaults.json), then every named
method at the training-free default's steps and repeats (guidescope.evaluation.search.method_setting
at strength factor 1), one batch of --batch images of one class through guidescope.generation,
the fastest of --repeats runs, settings interleaved. FLOPs per image are counted on one run with
torch's flop formulas (flop_registry, as FlopCounterMode counts; forward and backward, every
network: UNet, decoder, classifiers); the
floor is those FLOPs at the sgemm rate measured in the same run (a 1024 x 1024 matmul), so
"x floor" says how many times slower than dense matrix products at full speed the method runs.
The 1-minute load average is printed first and written to the page: figures taken on a busy
machine are not figures.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from guidescope.bundle import load_bundle  # noqa: E402
from guidescope.cli import configure  # noqa: E402
from guidescope.evaluation.measure import Setting  # noqa: E402
from guidescope.evaluation.search import (SAMPLER, Structure, method_setting, noise_aware_default,  # noqa: E402
                                         training_free_default)
from guidescope.generation import generate  # noqa: E402
from guidescope.guide.training_free import LIBRARY_SETTING, METHODS  # noqa: E402
from guidescope.request import Request  # noqa: E402
from scripts.machine import load_average, load_line  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = (ROOT / "checkpoints" / "fashion-mnist-latent", ROOT / "checkpoints" / "fashion-mnist")


def sgemm_rate(threads: int) -> float:
    """FLOP/s of a float32 1024 x 1024 matmul on this machine now (the best of 5)."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        best = min(best, (time.perf_counter() - start) / 4)
    return 2 * 1024 ** 3 / best


def settings_of(folder: Path):
    """[(name, evaluation Setting)]: the noise-aware default, the training-free default, each named method."""
    noise_aware = noise_aware_default(folder)
    chosen = training_free_default(folder) or Setting(SAMPLER, 20, threshold=noise_aware.threshold,
                                                      guide=LIBRARY_SETTING)
    structure = Structure(chosen.steps, chosen.guide.recurrences, chosen.guide.iterations, chosen.guide.rho > 0)
    rows = [("noise-aware default", noise_aware), ("training-free default", chosen)]
    for method in METHODS:
        if method != "tfg":
            rows.append((METHODS[method].title, replace(chosen, guide=method_setting(method, structure, 1.0))))
    return rows


def run(bundle, setting, batch: int) -> float:
    start = time.perf_counter()
    generate(bundle, Request((setting.row(0, 0),), images_per_row=batch, steps=setting.steps, sampler=setting.sampler),
             batch_size=batch)
    return time.perf_counter() - start


class FlopCount(TorchDispatchMode):
    """FLOPs of every operation torch's FlopCounterMode counts (its flop_registry), forward and
    backward; without FlopCounterMode's module hooks, which torch.autograd.grad refuses."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        count = flop_registry.get(func._overloadpacket)
        if count is not None:
            self.total += count(*args, **kwargs, out_val=out)
        return out


def flops(bundle, setting) -> float:
    """FLOPs of one image of the setting, forward and backward."""
    with FlopCount() as counter:
        generate(bundle, Request((setting.row(0, 0),), images_per_row=1, steps=setting.steps, sampler=setting.sampler),
                 batch_size=1)
    return counter.total


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoints", nargs="+", default=[str(b) for b in BUNDLES])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "docs" / "TRAINING_FREE_SPEED.md"))
    args = p.parse_args(argv)
    configure(torch.device("cpu"), args.threads)
    start_load = load_average()
    print(load_line(start_load))
    rate = sgemm_rate(args.threads)
    lines = ["# Training-free guidance: time per image, beside the noise-aware default", "",
             f"`python scripts/benchmark_training_free.py --batch {args.batch} --threads {args.threads} --repeats "
             f"{args.repeats}` on the CPU ({args.threads} threads), one batch of {args.batch} images, the fastest of "
             f"{args.repeats} runs, settings interleaved. {load_line(start_load)}. sgemm measured in the same run: "
             f"{rate / 1e9:.0f} GFLOP/s.", ""]
    for folder in map(Path, args.checkpoints):
        bundle = load_bundle(folder, backend="auto")      # as the app and the command line run it
        counted = load_bundle(folder, backend="torch")    # FlopCounterMode sees torch's operations only
        rows = settings_of(folder)
        best = {name: float("inf") for name, _ in rows}
        for _ in range(args.repeats):
            for name, setting in rows:
                best[name] = min(best[name], run(bundle, setting, args.batch))
        base = best["noise-aware default"] / args.batch
        lines += [f"## `{folder.name}`", "",
                  "| guide | setting | s per image | ms per step and image | time / noise-aware | GFLOP per image | "
                  "x floor |", "|---|---|---:|---:|---:|---:|---:|"]
        for name, setting in rows:
            per_image = best[name] / args.batch
            work = flops(counted, setting)
            lines.append(f"| {name} | {setting.label()} | {per_image:.4f} | {1e3 * per_image / setting.steps:.2f} | "
                         f"{per_image / base:.1f}x | {work / 1e9:.2f} | {per_image / (work / rate):.1f} |")
            print(lines[-1], flush=True)
        lines.append("")
    end_load = load_average()  # this run's own threads count in it: only the start's says the machine was quiet
    lines.append(load_line(end_load, "end", advice=None) + " (this run's own threads included).")
    print(lines[-1])
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Time sampling steps: unguided, classifier-guided and classifier-free, at batch 1 and 16.

    python scripts/benchmark_sampling.py [--checkpoints checkpoints/fashion-mnist] [--threads 2]

Prints ms per sampling step, the ratio to unguided (target for classifier guidance: <= 1.3) and
the share of the loop's wall time spent outside the networks (target: < 5%). Network time is
measured by wrappers around the UNet and classifier calls; for classifier guidance it includes the
backward pass through the classifier, timed from the gradient reaching the logits to it reaching
x_t. Unguided and CFG runs skip the log p(c | x_t) diagnostic (one classifier forward per step),
so unguided is one UNet call per step. Each figure is the fastest of --repeats runs, modes
interleaved, since other load on a shared machine only adds time. Uses the checkpoints when
present, else networks of the shipped sizes (UNetConfig() and ClassifierConfig()) with random
weights, which cost the same. --out also writes the figures as JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from guidance import GaussianDiffusion, GuidedDenoiser, Guidance, SharedNoise, sample  # noqa: E402
from guidance.checkpoints import load_bundle  # noqa: E402
from guidance.models import ClassifierConfig, NoisyClassifier, UNet, UNetConfig  # noqa: E402

MODES = {  # name -> (classifier scale w, classifier-free w_cfg)
    "unguided": (0.0, None),
    "classifier": (2.0, None),
    "cfg": (0.0, 2.0),
}
RATIO_TARGET, OUTSIDE_TARGET = 1.3, 0.05


class Timed:
    """Calls a network and adds its wall time, forward and (when a gradient flows back through
    it to its input) backward, to a shared clock."""

    def __init__(self, net, clock: list, sync):
        self.net, self.clock, self.sync = net, clock, sync
        self.backward_start = 0.0

    def __call__(self, x, *args):
        self.sync()
        start = time.perf_counter()
        out = self.net(x, *args)
        self.sync()
        self.clock[0] += time.perf_counter() - start
        if x.requires_grad and out.requires_grad:
            out.register_hook(self._gradient_reaches_output)
            x.register_hook(self._gradient_reaches_input)
        return out

    def _gradient_reaches_output(self, grad):
        self.sync()
        self.backward_start = time.perf_counter()

    def _gradient_reaches_input(self, grad):
        self.sync()
        self.clock[0] += time.perf_counter() - self.backward_start


def networks(folder: Path, device):
    """(unet, classifier, steps -> respaced diffusion, where they came from)."""
    if (folder / "unet.json").is_file():
        bundle = load_bundle(folder, device)
        return bundle.unet, bundle.classifier, bundle.diffusion, f"checkpoints {folder}"
    torch.manual_seed(0)
    unet = UNet(UNetConfig()).to(device).eval().requires_grad_(False)
    classifier = NoisyClassifier(ClassifierConfig()).to(device).eval().requires_grad_(False)
    return (unet, classifier, lambda steps: GaussianDiffusion.from_schedule("cosine", 1000, steps),
            "random weights (no checkpoints)")


def measure(unet, classifier, diffusion, mode: str, batch: int, steps: int, sampler: str, device) -> dict:
    """One sampling run of `steps` steps: ms per step and the share of time outside the networks."""
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    clock = [0.0]
    model = GuidedDenoiser(Timed(unet, clock, sync), Timed(classifier, clock, sync), unet.null_label)
    scale, cfg_scale = MODES[mode]
    guidance = Guidance.make(0, scale, cfg_scale, batch_size=batch, diagnostics=False)
    config = unet.config
    shape = (batch, config.in_channels, config.image_size, config.image_size)
    sync()
    start = time.perf_counter()
    for _ in sample(model, diffusion, shape, guidance, SharedNoise(0), sampler, device=device):
        pass
    sync()
    total = time.perf_counter() - start
    return {"mode": mode, "batch": batch, "ms_per_step": 1000 * total / steps,
            "outside_networks": (total - clock[0]) / total}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoints", default="checkpoints/fashion-mnist")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-sizes", default="1,16")
    p.add_argument("--steps", type=int, default=10, help="timed sampling steps per measurement")
    p.add_argument("--repeats", type=int, default=3, help="runs per measurement; the fastest counts")
    p.add_argument("--sampler", choices=("ddim", "ddpm"), default="ddim")
    p.add_argument("--out", help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    unet, classifier, diffusion, source = networks(Path(args.checkpoints), args.device)
    params = lambda net: sum(p.numel() for p in net.parameters()) / 1e6
    print(f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} threads, {args.sampler}; "
          f"UNet {params(unet):.2f}M and classifier {params(classifier):.2f}M parameters, {source}")
    print(f"{'batch':>5}  {'mode':<10}  {'ms/step':>8}  {'x unguided':>10}  {'outside networks':>16}")
    rows = []
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        measure(unet, classifier, diffusion(2), "classifier", batch, 2, args.sampler, args.device)  # warm-up
        best = {}
        for _ in range(args.repeats):
            for mode in MODES:
                row = measure(unet, classifier, diffusion(args.steps), mode, batch, args.steps, args.sampler, args.device)
                if mode not in best or row["ms_per_step"] < best[mode]["ms_per_step"]:
                    best[mode] = row
        for mode, row in best.items():
            row["ratio_to_unguided"] = row["ms_per_step"] / best["unguided"]["ms_per_step"]
            rows.append(row)
            ratio_flag = " (target <= 1.3)" if mode == "classifier" and row["ratio_to_unguided"] > RATIO_TARGET else ""
            outside_flag = " (target < 5%)" if row["outside_networks"] >= OUTSIDE_TARGET else ""
            print(f"{batch:>5}  {mode:<10}  {row['ms_per_step']:>8.1f}  {row['ratio_to_unguided']:>10.2f}"
                  f"{ratio_flag}  {100 * row['outside_networks']:>15.1f}%{outside_flag}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"source": source, "threads": torch.get_num_threads(),
                                              "device": args.device, "sampler": args.sampler,
                                              "steps": args.steps, "repeats": args.repeats, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Guidance classifiers of one bundle side by side, at the bundle's default setting.

    python scripts/compare_classifiers.py --checkpoints checkpoints/fashion-mnist-latent \
        --candidate runs/lcls-long --candidate runs/lcls-attn [--images-per-class 100] \
        [--scale W] [--threads 1] [--out docs/latent/CLASSIFIERS.md]

For the shipped classifier and each candidate folder (its classifier.json and .safetensors, trained
for the same bundle: a latent one on the same autoencoder), with everything else of the bundle as
shipped:
- accuracy on noisy held-out images by quarter of the timestep range (every held-out image, with
  the evaluation's noise seed: RESULTS.md's line uses 2000 of them), and in the first row that of the
  training images' own posterior (guidescope.metrics.plug_in_accuracy_by_quarter): about the most a
  classifier trained on them can reach in the noisy quarters;
- the fidelity, Frechet distance and per-class fidelity at the bundle's default (defaults.json)
  on images-per-class images of each class, drawn from the evaluation's seed as its decision sweep
  draws them (the shipped row repeats that sweep's default row); the candidates' differences from
  the shipped classifier are paired: the same noise and the same bootstrap resamples;
- the classifier's FLOPs per image (forward and backward) and the sampling time per step it adds at
  the default: the median of interleaved guided and unguided runs of 8 images (w = 0 skips the
  classifier), with the load average beside it.

A candidate is better when the 95% intervals of its paired differences from the shipped classifier
put its noisiest-quarter accuracy and its fidelity above the shipped one's (both intervals above 0),
and it is non-inferior to the shipped one by the evaluation's margins (guidescope/evaluation/defaults.py).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from guidescope import checkpoints  # noqa: E402
from guidescope.bundle import load_bundle  # noqa: E402
from guidescope.cli import configure  # noqa: E402
from guidescope.evaluation import command as evaluate  # noqa: E402
from guidescope.evaluation.defaults import FD_MARGIN, FIDELITY_MARGIN, non_inferior, setting_name  # noqa: E402
from guidescope.evaluation.measure import Measurement, Setting, judge, measure, real_reference, request  # noqa: E402
from guidescope.evaluation.sweeps import BUDGETS  # noqa: E402
from guidescope.generation import generate  # noqa: E402
from guidescope.metrics import noisy_correct_by_quarter, paired_difference, plug_in_accuracy_by_quarter  # noqa: E402
from scripts.machine import load_average, load_line  # noqa: E402

TIMING_IMAGES = 8   # the app's default batch
SEED = evaluate.parser().get_default("seed")  # the evaluation's, so the shipped row repeats its default row


def default_of(folder: Path) -> tuple[Setting, str]:
    """The bundle's default (its defaults.json, as Defaults.to_json writes it) as the evaluation's
    Setting, and the budget that chose it."""
    d = json.loads((folder / "defaults.json").read_text())
    return Setting(d["sampler"], d["steps"], d["scale"], None, d["schedule"], d["interval"], d["threshold"]), d["budget"]


def flops_per_image(classifier, shape) -> float:
    """Forward and backward FLOPs of one image: what a guided step adds besides the UNet."""
    x = torch.zeros(1, *shape, requires_grad=True)
    with torch.enable_grad(), FlopCounterMode(display=False) as counter:
        classifier(x, torch.zeros(1, dtype=torch.long)).logsumexp(1).sum().backward()
    return counter.get_total_flops()


def seconds_per_step(bundle, setting: Setting, repeats: int) -> tuple[float, float]:
    """Median seconds per step of guided and unguided runs of TIMING_IMAGES images, interleaved."""
    def once(s: Setting) -> float:
        start = time.perf_counter()
        generate(bundle, request(s, 1, TIMING_IMAGES, 0), TIMING_IMAGES)
        return (time.perf_counter() - start) / s.steps
    once(setting)  # warm-up
    runs = [(once(setting), once(replace(setting, scale=0.0))) for _ in range(repeats)]
    return statistics.median(g for g, _ in runs), statistics.median(u for _, u in runs)


def verdict_text(m: Measurement, shipped: Measurement) -> str:
    """m against the shipped network's measurement: the paired differences and the verdict."""
    v = non_inferior(m, shipped)
    return (f"fidelity {v.fidelity.text(1, percent=True)}; Frechet ratio {v.fd_ratio.value:.3f} "
            f"[{v.fd_ratio.low:.3f}, {v.fd_ratio.high:.3f}]; {'non-inferior' if v.accepted else 'not non-inferior'}")


def comparison_arguments(p: argparse.ArgumentParser, checkpoints: str, kind: str, default: str) -> None:
    """The options both comparisons take: the bundle, the candidates (folders with KIND.json), the
    images, threads, backend, batch and the page."""
    p.add_argument("--checkpoints", default=checkpoints)
    p.add_argument("--candidate", action="append", default=[], help=f"a folder with {kind}.json (repeatable)")
    p.add_argument("--images-per-class", type=int, help=f"default: the decision sample of the budget that chose {default}")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--backend", default="auto", help="what runs the UNet (as guidescope.evaluate's --backend)")
    p.add_argument("--batch-size", type=int, default=evaluate.parser().get_default("batch_size"),
                   help="images sampled at once (guidescope.evaluate's default)")
    p.add_argument("--out", help="write the table to this Markdown file")


def write_page(path: str | None, lines: list[str]) -> None:
    """The comparison's Markdown page, where --out names a file."""
    if path:
        Path(path).write_text("\n".join(lines))
        print(f"wrote {path}")


def row(name: str, m: Measurement, correct: list[torch.Tensor], flops: float, step: tuple[float, float],
        shipped: tuple[Measurement, list[torch.Tensor]] | None) -> str:
    low, high = m.interval("fidelity")
    versus = "–"
    if shipped is not None:
        q3 = [100 * d for d in paired_difference(correct[3], shipped[1][3], seed=SEED)]
        versus = f"acc q3 {q3[0]:+.1f} pt [{q3[1]:+.1f}, {q3[2]:+.1f}]; {verdict_text(m, shipped[0])}"
    acc = [int(c.sum()) / len(c) for c in correct]
    return (f"| {name} | " + " | ".join(f"{a:.1%}" for a in acc) + f" | {m.scores.fidelity:.1%} [{low:.1%}, {high:.1%}] | "
            f"{m.show('fd')} | {versus} | {flops / 1e6:.1f} | {1e3 * (step[0] - step[1]):.2f} of {1e3 * step[0]:.2f} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    comparison_arguments(p, "checkpoints/fashion-mnist", "classifier", "the default")
    p.add_argument("--scale", type=float, help="classifier guidance w (default: the bundle's default); a better "
                                                 "classifier may reach the fidelity target at a lower w")
    p.add_argument("--repeats", type=int, default=5, help="timing runs of each kind")
    args = p.parse_args(argv)
    configure("cpu", args.threads)
    load = load_average()
    folder = Path(args.checkpoints)
    setting, budget_name = default_of(folder)
    if args.scale is not None:
        setting = replace(setting, scale=args.scale)
    budget = BUDGETS[budget_name]
    candidates = [Path(c) for c in args.candidate]
    try:
        bundle = load_bundle(folder, need_evaluator=True, backend=args.backend)
        # Each candidate checked as load_bundle checks a folder's own classifier, then put in the bundle.
        bundles = [bundle] + [replace(bundle, classifier=load_bundle(folder, classifier_folder=c).classifier)
                              for c in candidates]
    except checkpoints.CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    train, every_test = evaluate.load_data(evaluate.parser().parse_args(["--checkpoints", str(folder)]), bundle)
    test = evaluate.held_out(every_test, budget)
    features, _ = judge(bundle.evaluator, test.images)
    classes = len(bundle.class_names)
    n = args.images_per_class or budget.decision_images(classes)
    reference = real_reference(features, n * classes)
    latents = bundle.codec.encode(every_test.images)  # every held-out image: half the interval of the evaluation's 2000
    print(f"{load_line(load)}; {args.threads} torch threads; default {setting.label()}")
    names = [f"shipped ({folder / 'classifier.json'})"] + [str(c / "classifier.json") for c in candidates]
    ceiling = plug_in_accuracy_by_quarter(bundle.codec.encode(train.images), train.labels, bundle.diffusion(), latents, every_test.labels)
    lines = [f"| the {len(train.labels)} training images' own posterior (no network) | "
             + " | ".join(f"{a:.1%}" for a in ceiling) + " | – | – | – | – | – |"]
    print(lines[0], flush=True)
    shipped, per_class = None, []
    for name, b in zip(names, bundles):
        correct = noisy_correct_by_quarter(b.classifier, b.diffusion(), latents, every_test.labels)
        m, _ = measure(b, setting, reference, n, SEED, budget.resamples, args.batch_size)
        line = row(name, m, correct, flops_per_image(b.classifier, b.sample_shape), seconds_per_step(b, setting, args.repeats),
                   shipped)
        print(line, flush=True)
        lines.append(line)
        per_class.append(f"| {name} | " + " | ".join(f"{v:.1%}" for v in m.per_class) + " |")
        shipped = shipped or (m, correct)
    command = "python scripts/compare_classifiers.py " + " ".join(sys.argv[1:] if argv is None else argv)
    at = "the default" if args.scale is None else f"w = {setting.scale:g}"
    page = [f"# Guidance classifiers at {at}", "",
            f"Written by `{command}` on {os.cpu_count()} CPU cores ({args.threads} torch threads; 1-minute load "
            f"average {load:.2f} at the start), for `{folder}` at its default{'' if args.scale is None else ' but w'}, {setting_name(setting)} and "
            f"w = {setting.scale:g}, on {n * classes} images ({n} per class, the evaluation's seed {SEED}), "
            "everything but the classifier as shipped. Differences are paired (the same noise and bootstrap "
            "resamples; the noisy accuracy's on the same noisy images, redrawn), 95% intervals; non-inferior: "
            f"the evaluation's margins (fidelity above -{100 * FIDELITY_MARGIN:g} points, Frechet ratio below {1 + FD_MARGIN:g}). Accuracy: on the "
            f"{len(every_test.labels)} held-out images noised at a timestep drawn in each quarter (q3 the noisiest; "
            "the evaluation's noise seed); "
            "the first row is the posterior of the training images themselves, a sum of Gaussians "
            "N(sqrt(alpha-bar_t) x_0, (1 - alpha-bar_t) I) over them (no network): in the noisy quarters, about "
            "the most a classifier trained on them can reach (at low noise it is a nearest neighbour, which "
            "a network beats). "
            f"The time a step adds is the median guided minus unguided step of {TIMING_IMAGES} images, of "
            f"{args.repeats} interleaved runs: loose when the load average is not near 0.", "",
            "| classifier | acc q0 | acc q1 | acc q2 | acc q3 | fidelity | Frechet dist. | against shipped | "
            "MFLOP fwd+bwd per image | ms a step adds (of the step) |",
            "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|", *lines, "",
            f"Per-class fidelity at {at}:", "", "| classifier | " + " | ".join(bundle.class_names) + " |",
            "|---|" + "---:|" * classes, *per_class, ""]
    write_page(args.out, page)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

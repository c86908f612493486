"""Clean guide classifiers of one bundle side by side, at the bundle's training-free default.

    python scripts/compare_guide_classifiers.py --checkpoints checkpoints/fashion-mnist-latent \
        --candidate checkpoints/candidates/guide-classifier-plain [--images-per-class 100] \
        [--threads 1] [--out docs/latent/GUIDE_CLASSIFIERS.md]

For the shipped guide classifier and each candidate folder (its guide_classifier.json and
.safetensors, any timm architecture), with everything else of the bundle as shipped:
- how it was trained (architecture, adversarial radius) and its accuracy on every held-out clean
  image;
- the fidelity, Frechet distance and per-class fidelity of the bundle's training-free default (the
  training_free record of defaults.json) guided by it, on images-per-class images of each class
  drawn from the evaluation's seed, scored by the evaluator (which never guides); the candidates'
  differences from the shipped guide are paired (the same noise and the same bootstrap resamples),
  with the evaluation's non-inferiority margins.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from guidescope.bundle import load_bundle, read_defaults  # noqa: E402
from guidescope.checkpoints import CheckpointError, read_config  # noqa: E402
from guidescope.cli import configure  # noqa: E402
from guidescope.evaluation import command as evaluate  # noqa: E402
from guidescope.evaluation import search  # noqa: E402
from guidescope.evaluation.defaults import FD_MARGIN, FIDELITY_MARGIN  # noqa: E402
from guidescope.evaluation.measure import Measurement, Setting, judge, measure, real_reference  # noqa: E402
from guidescope.evaluation.sweeps import BUDGETS  # noqa: E402
from guidescope.training.tasks import TASKS  # noqa: E402
from scripts.compare_classifiers import comparison_arguments, verdict_text, write_page  # noqa: E402
from scripts.machine import load_average, load_line  # noqa: E402

SEED = evaluate.parser().get_default("seed")  # the evaluation's: the shipped row repeats the search's decision row


def training_free_default(folder: Path) -> tuple[Setting, str]:
    """The bundle's training-free default as the evaluation's Setting, and the budget that chose the
    defaults; refused where defaults.json has no training-free record."""
    setting = search.training_free_default(folder)
    if setting is None:
        raise CheckpointError(f"{folder / 'defaults.json'} has no training_free record: run "
                              "python -m guidescope.evaluate --training-free first")
    return setting, read_defaults(folder).get("budget", "cpu")


def row(name: str, record: dict, accuracy: float, m: Measurement, shipped: Measurement | None) -> str:
    low, high = m.interval("fidelity")
    versus = "-" if shipped is None else verdict_text(m, shipped)
    return (f"| {name} | {search.guide_training(record)} | {accuracy:.1%} | {m.scores.fidelity:.1%} [{low:.1%}, {high:.1%}] | "
            f"{m.show('fd')} | {versus} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    comparison_arguments(p, "checkpoints/fashion-mnist-latent", "guide_classifier", "the training-free default")
    args = p.parse_args(argv)
    configure(torch.device("cpu"), args.threads)
    load = load_average()
    folder = Path(args.checkpoints)
    folders = [folder, *map(Path, args.candidate)]
    try:
        setting, budget_name = training_free_default(folder)
        bundle = load_bundle(folder, need_evaluator=True, backend=args.backend)
        # Each candidate checked as load_bundle checks a folder's own guide, then put in the bundle.
        bundles = [bundle] + [replace(bundle, guide_classifier=load_bundle(folder, guide_classifier_folder=f).guide_classifier)
                              for f in folders[1:]]
        records = [read_config(f, "guide_classifier") for f in folders]
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    budget = BUDGETS[budget_name]
    _, every_test = evaluate.load_data(evaluate.parser().parse_args(["--checkpoints", str(folder)]), bundle)
    features, _ = judge(bundle.evaluator, evaluate.held_out(every_test, budget).images)
    classes = len(bundle.class_names)
    n = args.images_per_class or budget.decision_images(classes)
    reference = real_reference(features, n * classes)
    print(f"{load_line(load)}; {args.threads} torch threads; {setting.label()}", flush=True)
    names = [f"shipped (`{folder.as_posix()}`)"] + [f"`{f.as_posix()}`" for f in folders[1:]]
    lines, per_class, shipped = [], [], None
    for name, b, record in zip(names, bundles, records):
        accuracy = TASKS["guide_classifier"]().held_out(b.guide_classifier, every_test, len(every_test.labels))["test_acc"]
        m, _ = measure(b, setting, reference, n, SEED, budget.resamples, args.batch_size)
        lines.append(row(name, record, accuracy, m, shipped))
        print(lines[-1], flush=True)
        per_class.append(f"| {name} | " + " | ".join(f"{v:.1%}" for v in m.per_class) + " |")
        shipped = shipped or m
    command = "python scripts/compare_guide_classifiers.py " + " ".join(sys.argv[1:] if argv is None else argv)
    page = ["# Clean guide classifiers at the training-free default", "",
            f"Written by `{command}` on {os.cpu_count()} CPU cores ({args.threads} torch threads; 1-minute load "
            f"average {load:.2f} at the start), for `{folder.as_posix()}` at its training-free default, "
            f"{setting.label()}, on {n * classes} images ({n} per class, the evaluation's seed {SEED}), everything "
            "but the guide classifier as shipped, scored by the evaluator (which never guides). Differences are "
            f"paired (the same noise and bootstrap resamples), 95% intervals; non-inferior: the evaluation's margins "
            f"(fidelity above -{100 * FIDELITY_MARGIN:g} points, Frechet ratio below {1 + FD_MARGIN:g}). Clean "
            f"accuracy: on all {len(every_test.labels)} held-out images.", "",
            "| guide classifier | training | clean accuracy | fidelity | Frechet dist. | against shipped |",
            "|---|---|---:|---:|---:|---|", *lines, "",
            "Per-class fidelity:", "", "| guide classifier | " + " | ".join(bundle.class_names) + " |",
            "|---|" + "---:|" * classes, *per_class, ""]
    write_page(args.out, page)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

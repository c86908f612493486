"""Does guidance trade diversity for fidelity, and what should the app start with? The command line
of the evaluation (guidescope/evaluation/): it measures every sweep at a budget's sample count,
chooses the app's defaults and writes the reports.

    python -m guidescope.evaluate --checkpoints checkpoints/fashion-mnist --budget cpu --out docs \\
        --model-card checkpoints/fashion-mnist/README.md --defaults checkpoints/fashion-mnist/defaults.json \\
        --readme README.md

Budgets: smoke (a handful of images and steps: checks the pipeline, its numbers mean nothing),
cpu (within an hour on a 2-core CPU; --estimate predicts it for this machine), gpu (the full sweep).
Writes OUT/results.json (rewritten after every setting; --resume keeps the settings already in it),
OUT/RESULTS.md and its figures. The model card and defaults.json go beside the checkpoints unless
that would replace what a larger budget (or a person) wrote; --model-card and --defaults name paths
that are always written; --readme refreshes the results section of that README. --report-only
rebuilds every file from OUT/results.json. --training-free searches the setting of training-free
guidance by the bundle's clean classifier instead (guidescope/evaluation/search.py): OUT/search.json,
OUT/TRAINING_FREE.md and the defaults' "training_free" record.
Data: the checkpoints' own "data" record when unet.json has one and no data option is given, else
the data options (Fashion-MNIST by default).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from dataclasses import replace
from pathlib import Path

import torch

from .. import cli
from ..bundle import Bundle, load_bundle
from ..checkpoints import CheckpointError, read_config
from ..cli import configure
from ..guide import NonFiniteError
from ..metrics import PRECISION_RECALL_K, noisy_accuracy_by_quarter
from ..networks.backend import BACKENDS
from ..request import SAMPLING_DEFAULTS
from ..training import data
from ..training.data import DataError
from . import card, report, search
from .defaults import Defaults, choose_defaults
from .measure import judge, real_reference
from .sweeps import BUDGETS, Budget, Results, RunInfo, estimate_seconds, run


def parser() -> argparse.ArgumentParser:
    summary, details = __doc__.split("\n\n", 1)
    p = argparse.ArgumentParser(prog="python -m guidescope.evaluate", description=summary, epilog=details,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoints", default="checkpoints/fashion-mnist", help="folder with unet, classifier and evaluator")
    p.add_argument("--budget", choices=tuple(BUDGETS), default="smoke", help="how much to measure (default smoke)")
    p.add_argument("--out", default="runs/evaluation", help="folder for results.json, RESULTS.md and the figures")
    p.add_argument("--model-card", help="write the model card here (default: CHECKPOINTS/README.md, guarded)")
    p.add_argument("--defaults", help="write the app's defaults here (default: CHECKPOINTS/defaults.json, guarded)")
    p.add_argument("--readme", help="refresh the results section of this README (between its results markers)")
    p.add_argument("--images-per-class", type=int, help="override the budget's images per class per setting")
    p.add_argument("--decision-images-per-class", type=int,
                   help="override the budget's images per class per setting of the decision sweep")
    p.add_argument("--seed", type=int, default=SAMPLING_DEFAULTS.seed)
    p.add_argument("--batch-size", type=int, default=500, help="images sampled at once")
    cli.add_device_arguments(p)
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="what runs the UNet forward pass (auto: the CPU runtime when it loads, else torch; "
                        "torch on CUDA)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="keep the settings already in OUT/results.json")
    mode.add_argument("--report-only", action="store_true", help="rebuild every file from OUT/results.json")
    mode.add_argument("--estimate", action="store_true", help="predict the budget's run time here, then stop")
    mode.add_argument("--training-free", action="store_true",
                      help="search the setting of training-free guidance by the bundle's clean classifier "
                           "(guidescope.evaluation.search; resumes from OUT/search.json) and write OUT/TRAINING_FREE.md "
                           "and the defaults' training_free record")
    p.add_argument("--structures", help="--training-free: the (DDPM steps, N_recur, N_iter) to search, as STEPSxRECURxITER "
                   "separated by commas, with -x0 where rho stays 0 (MPGD's shape), e.g. 10x1x1-x0,20x2x1 "
                   "(default: the budget's, guidescope.evaluation.search)")
    p.add_argument("--guide-classifier", metavar="DIR",
                   help="--training-free: guide with DIR's clean classifier (guide_classifier.json and .safetensors) "
                        "instead of the bundle's; the bundle's defaults.json is then left alone unless --defaults "
                        "names a file")
    p.add_argument("--skip-methods", action="store_true",
                   help="--training-free: leave out the named methods' comparison (each at its best strength, and "
                        "at the noise-aware default's time)")
    data.add_arguments(p)
    return p


def _data_options_given(args: argparse.Namespace) -> bool:
    probe = argparse.ArgumentParser(add_help=False)
    data.add_arguments(probe)
    return any(getattr(args, name) != default for name, default in vars(probe.parse_args([])).items())


def load_data(args: argparse.Namespace, bundle: Bundle) -> tuple[data.Dataset, data.Dataset]:
    """(train, test) the checkpoints were trained on, checked against their classes and image size."""
    record = read_config(bundle.folder, "unet").get("data")
    train, test = data.from_record(record) if record and not _data_options_given(args) else data.from_args(args)
    names = tuple(n.casefold() for n in bundle.class_names)
    if tuple(n.casefold() for n in test.class_names) != names:
        raise DataError(f"the data's classes ({', '.join(test.class_names)}) are not the checkpoints' "
                        f"({', '.join(bundle.class_names)})")
    if tuple(test.images.shape[1:]) != bundle.image_shape:
        raise DataError(f"the data's images are {tuple(test.images.shape[1:])} (C, H, W) but the checkpoints "
                        f"make {bundle.image_shape}; pass --image-size and --channels")
    if len(test.labels) <= PRECISION_RECALL_K:
        raise DataError(f"only {len(test.labels)} held-out images; precision and recall (k = {PRECISION_RECALL_K}) "
                        "need more: hold out more of each class (--holdout)")
    return train, test


def _subset(dataset: data.Dataset, size: int, seed: int) -> data.Dataset:
    """A seeded random subset (folders list their images class by class, so not the first ones)."""
    keep = torch.randperm(len(dataset.labels), generator=torch.Generator().manual_seed(seed))[:size]
    return dataset._replace(images=dataset.images[keep], labels=dataset.labels[keep])


def held_out(test: data.Dataset, budget: Budget) -> data.Dataset:
    """The evaluation's held-out images: budget.n_real of test, the same ones in every run (the
    Frechet reference, and the noisy images of the classifier's accuracy)."""
    return _subset(test, budget.n_real, 0)


def _device_text(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"{device.type}, {torch.get_num_threads()} threads"


def measure_all(args: argparse.Namespace, bundle: Bundle, budget: Budget, command: str) -> Results:
    """Load the data, measure the real images, run (or resume) every sweep."""
    train, test = load_data(args, bundle)
    test, train = held_out(test, budget), _subset(train, budget.n_real, 1)
    n = budget.images(len(bundle.class_names))
    features, predictions = judge(bundle.evaluator, test.images)
    reference = real_reference(features, n * len(bundle.class_names))
    decision_reference = real_reference(features, budget.decision_images(len(bundle.class_names)) * len(bundle.class_names))
    floor_features, _ = judge(bundle.evaluator, train.images)
    evaluator = bundle.evaluator.config
    info = RunInfo(
        command, budget.name, _device_text(bundle.device), bundle.backend, str(bundle.folder), bundle.class_names,
        test.record.to_json(), n, budget.decision_images(len(bundle.class_names)), args.seed, budget.resamples,
        budget.reference_steps, len(test.labels),
        f"ResNet, blocks {list(evaluator.layers)}, channels {list(evaluator.channels)}, {evaluator.input_size}px input",
        float((predictions.cpu() == test.labels).double().mean()), reference.frechet(floor_features),
        tuple(noisy_accuracy_by_quarter(bundle.classifier, bundle.diffusion(), bundle.codec.encode(test.images),
                                        test.labels)))
    path = Path(args.out) / "results.json"
    previous = None
    if args.resume and path.exists():
        previous = Results.load(path)
        differ = info.resumable_from(previous.info)
        if differ:
            raise ValueError(f"{path} was measured with other {', '.join(differ)}; run without --resume "
                             "to start afresh, or choose another --out")
    return run(bundle, budget, info, reference, path, previous, args.batch_size, decision_reference=decision_reference)


def search_training_free(args: argparse.Namespace, bundle: Bundle, budget: Budget, command: str) -> int:
    """The training-free search (guidescope.evaluation.search) against the bundle's noise-aware
    default; its page goes to OUT/TRAINING_FREE.md, its record into the defaults (with the budgets
    that may replace them)."""
    _, test = load_data(args, bundle)
    features, _ = judge(bundle.evaluator, held_out(test, budget).images)
    classes = len(bundle.class_names)
    sizes = (search.SCREENING * budget.images_per_class, budget.decision_images_per_class)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    guide = Path(args.guide_classifier or bundle.folder)
    found = search.Search(bundle, search.noise_aware_default(bundle.folder), sizes,
                          tuple(real_reference(features, n * classes) for n in sizes), out / "search.json", args.seed,
                          budget.resamples, networks=search.networks(bundle.folder, guide))
    structures = args.structures or search.STRUCTURES[budget.name]
    choice = search.decide(found, structures)
    at = search.methods_structure(structures)
    methods = [] if args.skip_methods else search.compare_methods(found, at)
    equal = {} if args.skip_methods else search.at_equal_time(found, [choice.chosen, *methods])
    never_stops = search.unstopped(found, choice.chosen)
    screened = [m for (n, setting), m in found.found.items() if n == sizes[0] and setting.guide is not None]
    page = search.results_page(choice, methods, screened, f"{command} ({_device_text(bundle.device)})", at,
                               search.guide_text(guide, read_config(guide, "guide_classifier")), equal, never_stops)
    (out / "TRAINING_FREE.md").write_text(page)
    if args.readme:
        readme = Path(args.readme)
        relative = Path(os.path.relpath(out / "TRAINING_FREE.md", readme.resolve().parent)).as_posix()
        section = search.readme_table(choice, methods, bundle.folder, relative, at, equal, never_stops)
        if card.update_readme(Path(args.readme), section, *search.readme_markers(bundle.folder)):
            print(f"refreshed the training-free table of {args.readme}")
    print(f"chosen: {choice.chosen.setting.label()}: {choice.reason}")
    path = Path(args.defaults) if args.defaults else bundle.folder / "defaults.json"
    if args.defaults or (not args.guide_classifier and card.may_replace(path, budget.name)):
        record = json.loads(path.read_text()) if path.exists() else {}
        record["training_free"] = search.defaults_record(choice)
        path.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote the training_free record of {path}")
    return 0


def print_estimate(bundle: Bundle, budget: Budget, batch_size: int) -> None:
    w = budget.sampler_scales[len(budget.sampler_scales) // 2]
    guess = Defaults(w, "", "ddim", budget.compare_ddim_steps, "")
    seconds, count, cost = estimate_seconds(bundle, budget, guess, batch_size)
    per_step = ", ".join(f"{1e3 * s:.1f} ms ({'2 UNet passes' if p == 2 else '1 UNet pass'}"
                         f"{' + classifier gradient' if g else ''})" for (p, g), s in cost.items())
    n = budget.images(len(bundle.class_names))
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    n_decide = budget.decision_images(len(bundle.class_names)) * len(bundle.class_names)
    print(f"{budget.name} budget: {count} settings of {n * len(bundle.class_names)} images (the decision sweep's of "
          f"{n_decide}); about "
          f"{seconds / 60:.0f} minutes on {_device_text(bundle.device)}{load} (supposing the default lands on DDIM "
          f"at {guess.steps} steps and w = {w:g}). Per image and step: {per_step}.")


def publish(results: Results, args: argparse.Namespace) -> None:
    """results.json with the chosen defaults, RESULTS.md and figures, model card, defaults.json, README."""
    out = Path(args.out)
    defaults = choose_defaults(results.measurements, results.info.reference_steps, results.decisions)
    results.save(out / "results.json", defaults)
    report.write_results_page(results, defaults, out)
    folder, budget, page = Path(results.info.checkpoints), results.info.budget, out / "RESULTS.md"
    card_path, defaults_path = Path(args.model_card or folder / "README.md"), Path(args.defaults or folder / "defaults.json")
    files = ((card_path, args.model_card, "--model-card", lambda: card.model_card(results, defaults, folder, card_path, page)),
             (defaults_path, args.defaults, "--defaults", lambda: card.defaults_json(defaults, budget, defaults_path)))
    for path, explicit, option, text in files:
        if explicit or card.may_replace(path, budget):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text())
            print(f"wrote {path}")
        else:
            print(f"kept {path}: a larger budget or a person wrote it (name it with {option} to replace it)")
    if args.readme:
        readme = Path(args.readme)
        if card.update_readme(readme, card.readme_section(results, defaults, readme, page)):
            print(f"wrote the results section of {readme}")
        else:
            print(f"left {readme} alone: it has no {card.README_START} ... {card.README_END} section")
    print(f"wrote {page}")


def main(argv=None) -> int:
    p = parser()
    args = p.parse_args(argv)
    cli.require_positive(p, args, "threads", "batch_size", "images_per_class", "decision_images_per_class")
    if args.guide_classifier and not args.training_free:
        p.error("--guide-classifier goes with --training-free (the other measurements never use a clean classifier)")
    if args.structures:  # read here, once: a bad one is refused before anything loads
        try:
            args.structures = search.structures(args.structures)
        except ValueError as err:
            p.error(f"--structures: {err}")
    command = "python -m guidescope.evaluate " + shlex.join(sys.argv[1:] if argv is None else argv)
    try:
        if args.report_only:
            results = Results.load(Path(args.out) / "results.json")
        else:
            device = torch.device(args.device)
            if device.type == "cuda" and not torch.cuda.is_available():
                p.error("--device cuda: no CUDA device is available")
            configure(device, args.threads)
            backend = "torch" if device.type == "cuda" and args.backend == "auto" else args.backend
            bundle = load_bundle(args.checkpoints, device, need_evaluator=True, backend=backend,
                                 guide_classifier_folder=args.guide_classifier)
            budget = BUDGETS[args.budget]
            if args.images_per_class:
                budget = replace(budget, images_per_class=args.images_per_class)
            if args.decision_images_per_class:
                budget = replace(budget, decision_images_per_class=args.decision_images_per_class)
            if args.training_free:
                return search_training_free(args, bundle, budget, command)
            print_estimate(bundle, budget, args.batch_size)  # what the run will take, before it starts
            if args.estimate:
                return 0
            Path(args.out).mkdir(parents=True, exist_ok=True)
            results = measure_all(args, bundle, budget, command)
        publish(results, args)
    except (CheckpointError, DataError, FileNotFoundError, NonFiniteError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


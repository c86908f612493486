"""The files an evaluation writes outside its own folder: the checkpoint folder's model card
(README.md), the app's defaults.json and the README's results section.

Written to default paths (beside the checkpoints), a file never replaces one that a larger budget
wrote, or one that no evaluation marked: a smoke run cannot clobber the shipped model card or
defaults. Paths given on the command line are written regardless.
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

from .defaults import Defaults, setting_name
from .report import describe_data
from .sweeps import BUDGETS, Results

MARKER = "<!-- written by python -m guidescope.evaluate, budget {budget} -->"
README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"
NETWORKS = (("autoencoder", "KL-regularised autoencoder: the latent space z (latent bundles only)"),
            ("unet", "eps-prediction UNet (EMA weights), null label for CFG"),
            ("classifier", "noise-conditioned classifier p(c given x_t or z_t, t), guides"),
            ("evaluator", "clean-image timm ResNet, judges only"),
            ("guide_classifier", "clean-image timm classifier p(c given x_0), guides through x-hat_0 (training-free); "
                                 "never judges"))


def _written_by(path: Path) -> str | None:
    """The budget an evaluation recorded in path (a marker line or a "budget" key), else None."""
    text = path.read_text(errors="replace")
    if path.suffix == ".json":
        try:
            return json.loads(text).get("budget")
        except (ValueError, AttributeError):
            return None
    found = re.search(MARKER.format(budget=r"(\w+)"), text)
    return found[1] if found else None


def may_replace(path: Path, budget: str) -> bool:
    """Whether a default-path write of a `budget` run may replace path (budgets rank as BUDGETS)."""
    if not path.exists():
        return True
    rank = list(BUDGETS)
    previous = _written_by(path)
    return previous in rank and rank.index(previous) <= rank.index(budget)


def _network_rows(folder: Path) -> list[str]:
    from safetensors import safe_open

    rows = []
    for name, what in NETWORKS:
        if not (folder / f"{name}.json").exists():  # pixel bundles have no autoencoder
            continue
        meta = json.loads((folder / f"{name}.json").read_text())
        with safe_open(folder / f"{name}.safetensors", "pt") as f:
            params = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
        runs = stages(meta.get("training", {}))
        rows.append(f"| {name}.safetensors | {what} | {params / 1e6:.2f} M | "
                    + "; then ".join(f"`{tr.get('command', '?')}`" for tr in runs) + " | "
                    + " + ".join(str(tr.get("steps", "?")) for tr in runs) + " | "
                    + " + ".join(str(tr.get("wall_time_minutes", "?")) for tr in runs) + " min | "
                    + ", ".join(str(tr.get("device", "?")) for tr in runs) + " |")
    return rows


def stages(training: dict) -> list[dict]:
    """The training runs that made a network, the first one first: a run started with --init
    records its init network's own training record under "init"."""
    earlier = (training.get("init") or {}).get("training")
    return (stages(earlier) if earlier else []) + [training]


def _default_line(results: Results, d: Defaults) -> list[str]:
    base = next((m for m in results.sweep("classifier") if m.setting.scale == 0), None)
    pick = next((m for m in results.measurements if m.setting == d.setting), None)
    lines = []
    if base:
        h = base.histogram
        lines.append(f"- Unguided (w = 0): Frechet distance {base.show('fd')} (floor {results.info.fd_floor:.2f}), "
                     f"class balance most/least {max(h) / max(min(h), 1):.2f}.")
    if pick:
        lines.append(f"- The app's default, {pick.setting.label()}: fidelity {pick.show('fidelity')}, Frechet "
                     f"distance {pick.show('fd')}, precision {pick.show('precision')}, recall {pick.show('recall')}.")
    return lines


def model_card(results: Results, defaults: Defaults, folder: Path, card: Path, results_page: Path) -> str:
    """The model card of the checkpoint folder: its data and classes, its networks, what the evaluation found."""
    info = results.info
    record = info.data
    counts = record.get("class_counts", {})
    title = ("Fashion-MNIST" if record["source"] == "fashion-mnist" else f"`{Path(record['folder']).name}`")
    lines = [f"# Checkpoints for {title}: {len(info.class_names)} classes", "", MARKER.format(budget=info.budget), "",
             "Written by `python -m guidescope.evaluate` from the JSON configs in this folder and the evaluation "
             f"({info.budget} budget, [{results_page.name}]({os.path.relpath(results_page, card.parent)})).", "",
             "## Data", "", f"{describe_data(record)}.", "",
             "| class | name | training images | held-out images |", "|---:|---|---:|---:|"]
    for c, name in enumerate(info.class_names):
        train, test = (counts.get(split, [None] * (c + 1))[c] for split in ("train", "test"))
        lines.append(f"| {c} | {name} | {train if train is not None else '?'} | {test if test is not None else '?'} |")
    lines += ["", "## Networks", "", "| file | network | parameters | training command | steps | wall time | device |",
              "|---|---|---:|---|---:|---:|---|", *_network_rows(folder), "",
              "Each network's JSON holds its config and training record; `python -m guidescope.train KIND --resume` "
              "continues from `train-KIND/state.safetensors`.", "",
              "## Evaluation", "",
              f"- {info.images_per_class} images per class per setting; ± is half the 95% bootstrap interval.",
              f"- Evaluator accuracy on the held-out images: {info.evaluator_test_acc:.2%}.",
              "- Guidance classifier accuracy on noisy held-out images by timestep quarter: "
              + ", ".join(f"{a:.1%}" for a in info.classifier_acc) + ".",
              *_default_line(results, defaults), f"- {decided_line(results, defaults)}"]
    return "\n".join(lines) + "\n"


def decided_line(results: Results, d: Defaults) -> str:
    """'The app defaults to UniPC at 10 steps and w = 5: fidelity 96.1% [94.9%, 97.2%] on 1000 images.'"""
    head = f"The app defaults to {setting_name(d.setting)} and w = {d.scale:g}"
    m = results.decided(d.setting)
    if m is None:
        return head + " (screened on the wide sweeps; not decided)."
    low, high = m.interval("fidelity")
    return (f"{head}: fidelity {m.scores.fidelity:.1%} [{low:.1%}, {high:.1%}] and Frechet distance "
            f"{m.show('fd')} on {m.images} images (the decision sweep).")


def readme_section(results: Results, defaults: Defaults, readme: Path, results_page: Path) -> str:
    """The README's results section: the classifier-guidance sweep."""
    rows = sorted(results.sweep("classifier"), key=lambda m: m.setting.scale)
    info = results.info
    table = ["| classifier w | fidelity | Frechet dist. | precision | recall |", "|---:|---:|---:|---:|---:|"]
    table += [f"| {m.setting.scale:g}{' (default)' if m.setting.scale == defaults.scale else ''} | "
              f"{m.show('fidelity')} | {m.show('fd')} | {m.show('precision')} | {m.show('recall')} |" for m in rows]
    body = [f"Unconditional model steered by the classifier alone, {info.images_per_class} samples per class, "
            f"{info.reference_steps} DDIM steps, judged by a separate evaluator ({info.evaluator_test_acc:.1%} "
            f"accuracy); ± is half the 95% bootstrap interval. {decided_line(results, defaults)} Written by `python -m guidescope.evaluate` ({info.budget} budget; "
            f"details in [{results_page.name}]({os.path.relpath(results_page, readme.parent)})).", "", *table]
    return "\n".join(body)


def update_readme(path: Path, section: str, start: str = README_START, end: str = README_END) -> bool:
    """Replace the text between the markers start and end (default: the results markers) of path;
    False when path lacks them."""
    if not path.is_file():
        return False
    text = path.read_text()
    if start not in text or end not in text:
        return False
    head, rest = text.split(start, 1)
    tail = rest.split(end, 1)[1]
    path.write_text(head + start + "\n" + section + "\n" + end + tail)
    return True


def defaults_json(defaults: Defaults, budget: str, previous: Path | None = None) -> str:
    """defaults.json's text: the chosen defaults, and the training-free record of the file at
    previous where it has one (the training-free search writes that record, not this evaluation)."""
    record = defaults.to_json(budget)
    kept = json.loads(previous.read_text()).get("training_free") if previous and previous.exists() else None
    return json.dumps({**record, **({"training_free": kept} if kept else {})}, indent=2) + "\n"

"""RESULTS.md and its figures (plots.py), from the Results alone: nothing here samples or measures.
The files written outside the evaluation's folder are card.py's.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..metrics import PRECISION_RECALL_K, Scores
from ..training.data import DEFAULT_FASHION_DIR
from . import plots
from .compare import difference, not_worse, verdict
from .defaults import (FD_MARGIN, FD_TARGET, FIDELITY_GOAL, FIDELITY_MARGIN, REFERENCE_SAMPLER, Defaults,
                       compare_schedules, is_plain, schedule_curves, setting_name)
from .measure import Measurement, Setting, sampler_name
from .sweeps import Results

Column = tuple[str, Callable[[Measurement], str]]


def _cfg(m: Measurement) -> str:
    return "uncond." if m.setting.cfg_scale is None else f"{m.setting.cfg_scale:g}"


SAMPLER: Column = ("sampler", lambda m: sampler_name(m.setting.sampler))
STEPS: Column = ("steps", lambda m: str(m.setting.steps))
SCALE: Column = ("classifier w", lambda m: f"{m.setting.scale:g}")
CFG: Column = ("CFG w", _cfg)
SCHEDULE: Column = ("schedule", lambda m: m.setting.schedule_name)
THRESHOLD: Column = ("x-hat_0", lambda m: m.setting.threshold)
METRICS: list[Column] = [(title, lambda m, metric=metric: m.show(metric)) for title, metric in
                         zip(("fidelity", "Frechet dist.", "precision", "recall"), Scores._fields)]
SECONDS: Column = ("sampling s", lambda m: f"{m.sample_seconds:.1f}")


def _table(rows: Sequence[Measurement], columns: Sequence[Column]) -> list[str]:
    lines = ["| " + " | ".join(title for title, _ in columns) + " |",
             "|" + "|".join("---" if k == 0 else "---:" for k in range(len(columns))) + "|"]
    return lines + ["| " + " | ".join(cell(m) for _, cell in columns) + " |" for m in rows]


def describe_data(record: dict) -> str:
    """The data in one sentence, from a guidescope.training.data.DataRecord's JSON."""
    if record["source"] == "fashion-mnist":
        where = ("Debian's `dataset-fashion-mnist`" if Path(record["folder"]) == DEFAULT_FASHION_DIR
                 else f"`{record['folder']}`")
        what = f"Fashion-MNIST (its published split) from {where}"
    else:
        split = ("its train/ and test/ folders" if record["split"] == "folders"
                 else f"holding out {record['holdout']:.0%} of each class (split seed {record['split_seed']})")
        what = f"the image folder `{record['folder']}`, split by {split}"
        if record.get("duplicates_dropped"):
            what += f", {record['duplicates_dropped']} duplicate images left out"
    colour = "grey" if record["channels"] == 1 else "RGB"
    return (f"{what}: {record['counts']['train']} training and {record['counts']['test']} held-out images, "
            f"{record['image_size']}x{record['image_size']} {colour}")


def _noise_summary(results: Results) -> str:
    medians = {m: float(np.nanmedian([r.half_width(m) for r in results.measurements])) for m in Scores._fields}
    return (f"Median ± over all settings: fidelity {100 * medians['fidelity']:.1f} pt, Frechet distance "
            f"{medians['fd']:.2f}, precision {medians['precision']:.3f}, recall {medians['recall']:.3f}.")


def _header(results: Results) -> list[str]:
    info = results.info
    n, classes = info.images_per_class, len(info.class_names)
    return [
        "# Evaluation results", "",
        f"Written by `{info.command}`: the **{info.budget}** budget on {info.device} (UNet forward pass: "
        f"{info.backend}), checkpoints `{info.checkpoints}`. Every number below comes from that run"
        + (" (resumed: the settings already in results.json, measured earlier with the same budget, seed and data, "
           "were kept, the others measured)" if "--resume" in info.command.split() else "") + "; "
        "`python -m guidescope.evaluate --report-only --out FOLDER` rebuilds this page from FOLDER/results.json.", "",
        f"**Samples.** {n} images per class, {n * classes} per setting, seed {info.seed}. Image j of class c is "
        f"image c*{n} + j of the seed's run (guidescope/noise.py): every setting starts from the same noise, class "
        f"0's images are those of `python -m guidescope.sample --class 0 --n {n} --seed {info.seed}` and of the app "
        "at that seed (byte for byte when sampled in the same batches; tests/test_same_images.py), and no two "
        "classes share an image (k-NN recall needs distinct images).", "",
        "**Metrics.** Fidelity: share of samples the evaluator assigns to the requested class. Frechet distance, "
        f"precision and recall (k = {PRECISION_RECALL_K}) use the evaluator's penultimate features against {info.n_real} held-out "
        f"images (precision and recall against {min(info.n_real, n * classes)} of them, as many as generated).", "",
        f"**Noise.** ± is half the width of the 95% bootstrap percentile interval ({info.resamples} resamples of "
        "the generated images, class by class; the real images stay fixed). Two settings are compared by the "
        "paired bootstrap of their difference (the same resamples of the same seeds); they differ *within "
        "noise* when the 95% interval of the difference contains 0, a description that never decides a default. " + _noise_summary(results), "",
        f"- Data: {describe_data(info.data)}.",
        f"- Evaluator ({info.evaluator}): accuracy {info.evaluator_test_acc:.2%} on the held-out images.",
        f"- Frechet distance floor ({info.n_real} training images against the held-out ones): {info.fd_floor:.2f}.",
        "- Guidance classifier accuracy on noisy held-out images, by timestep quarter: "
        + ", ".join(f"t in [{q * 25}%, {(q + 1) * 25}%) of T: {a:.1%}" for q, a in enumerate(info.classifier_acc))
        + ".", ""]


def _defaults_section(d: Defaults, results: Results) -> list[str]:
    schedule = "constant w over every step" if d.schedule == "constant" and d.interval is None else (
        f"{d.schedule} over timesteps {d.interval[0]}-{d.interval[1]}")
    sample = (f"Decided on {d.decision_images} images a setting (the decision sweep, below)." if d.decision_images
              else "**Screened only**: the decision sweep has not run, so these are not decided defaults.")
    lines = ["## The app's defaults", "",
             f"Written to defaults.json. {sample} The wide sweeps screen; the decision is made on a larger sample "
             "by non-inferiority, where the whole 95% interval must clear a stated margin, so a smaller sample "
             "makes a setting harder to pass, never easier (guidescope/evaluation/defaults.py):", "",
             f"1. Sampler, steps and x̂_0 threshold (the clip or dynamic thresholding): at the screened w, the "
             f"cheapest setting whose fidelity difference from {REFERENCE_SAMPLER.upper()} at the reference step "
             "count (with the clip) has its interval above "
             f"-{100 * FIDELITY_MARGIN:g} points and whose Frechet distance ratio has its interval below "
             f"{1 + FD_MARGIN:g}.",
             f"2. Scale: at that sampler and step count, the smallest w whose fidelity interval starts at "
             f"{FIDELITY_GOAL - FIDELITY_MARGIN:.1%} or above (a {FIDELITY_GOAL:.0%} goal read with the same "
             f"margin) and whose Frechet distance is at most {FD_TARGET:g}x the unguided one; if none gets there, "
             "more steps.",
             "3. Schedule: compared with constant w at equal fidelity and reported; not applied.", "",
             f"- Classifier-guidance scale w = {d.scale:g}: {d.scale_reason}.",
             f"- {setting_name(d.setting)}: {d.steps_reason}.",
             f"- Schedule: {schedule}: {d.schedule_reason}.", ""]
    if results.decisions:
        lines += ["### The decision sweep", "",
                  f"Every setting the rules asked for, in the order they asked, on {results.decisions[0].images} "
                  "images each (a sample of its own: these rows are not in the tables below).", "",
                  *_table(results.decisions, [SAMPLER, STEPS, THRESHOLD, SCALE, *METRICS, SECONDS]), "",
                  "Per-class fidelity at the default:", ""]
        default = results.decided(d.setting)
        if default is not None:
            names = results.info.class_names
            lines += ["| " + " | ".join(names) + " |", "|" + "---:|" * len(names),
                      "| " + " | ".join(f"{v:.1%}" for v in default.per_class) + " |", ""]
    return lines


def _classifier_section(results: Results) -> list[str]:
    rows = sorted(results.sweep("classifier"), key=lambda m: m.setting.scale)
    if not rows:
        return []
    names = results.info.class_names
    lines = ["## Classifier guidance on the unconditional model", "",
             "The UNet gets the null label; only the classifier's gradient steers.", "",
             *_table(rows, [SAMPLER, STEPS, SCALE, *METRICS, SECONDS]), "",
             "![fidelity, precision, recall and Frechet distance against the guidance scale](guidance_tradeoff.png)",
             "", "Per-class fidelity:", "", "| w | " + " | ".join(names) + " |", "|---:|" + "---:|" * len(names)]
    lines += [f"| {m.setting.scale:g} | " + " | ".join(f"{v:.0%}" for v in m.per_class) + " |" for m in rows]
    base = next((m for m in rows if m.setting.scale == 0), None)
    if base:
        h = base.histogram
        lines += ["", "Unconditional samples (w = 0), as the evaluator classifies them "
                  f"(most / least frequent = {max(h) / max(min(h), 1):.2f}):", "",
                  "| " + " | ".join(names) + " |", "|" + "---:|" * len(names), "| " + " | ".join(map(str, h)) + " |"]
    return lines + ["", "![image 0 of each class (columns) at each scale (rows), the same noise in every row]"
                    "(samples_classifier.png)", ""]


def _against(reference: Measurement) -> list[Column]:
    """Columns of the paired differences to a reference row, and the verdict."""
    def diff(metric, digits, percent=False):
        return lambda m: "–" if m is reference else difference(m, reference, metric).text(digits, percent)
    return [("fidelity diff.", diff("fidelity", 1, True)), ("Frechet diff.", diff("fd", 2)),
            ("verdict", lambda m: "reference" if m is reference else
             verdict({k: difference(m, reference, k) for k in ("fidelity", "fd")}))]


def _samplers_section(results: Results, d: Defaults) -> list[str]:
    rows = sorted(results.sweep("steps"), key=lambda m: (m.setting.threshold, m.setting.sampler, m.setting.steps))
    ref_steps = results.info.reference_steps
    reference = next((m for m in rows if is_plain(m) and (m.setting.sampler, m.setting.steps)
                      == (REFERENCE_SAMPLER, ref_steps)), None)
    if reference is None:
        return []
    ref_name = f"{REFERENCE_SAMPLER.upper()} at {ref_steps} steps"
    lines = ["## Samplers and step counts", "",
             f"At the default scale w = {rows[0].setting.scale:g}, unconditional model. One network evaluation per "
             f"step, with each x̂_0 threshold. Differences (95% paired intervals) are against {ref_name} with the "
             "clip; the verdict reads fidelity and Frechet distance together.", "",
             *_table(rows, [SAMPLER, STEPS, THRESHOLD, *METRICS, *_against(reference), SECONDS]), "",
             f"Default: {setting_name(d.setting)}. {d.steps_reason[0].upper()}{d.steps_reason[1:]}.", "",
             "![fidelity and Frechet distance against the number of network evaluations](sampler_steps.png)", ""]
    return lines + _across_scales(results.sweep("samplers"), ref_steps)


def _across_scales(rows: list[Measurement], ref_steps: int) -> list[str]:
    if not rows:
        return []
    threshold = rows[0].setting.threshold
    lines_of = sorted({(m.setting.sampler, m.setting.steps) for m in rows}, key=lambda k: (k[0] != "ddim", -k[1]))
    at = {(m.setting.sampler, m.setting.steps, m.setting.scale): m for m in rows}
    scales = sorted({m.setting.scale for m in rows})
    fast = [k for k in lines_of if k[0] != "ddim"]
    ddims = [k for k in lines_of if k[0] == "ddim"]
    header = ["w"] + [f"{sampler_name(s)} {n}: fidelity / Frechet" for s, n in lines_of]
    header += [f"{sampler_name(s)} {n} vs DDIM {r}" for s, n in fast for _, r in ddims]
    lines = ["### Across guidance strengths", "",
             "The same comparison over w (verdicts on fidelity and Frechet distance, 95% paired intervals).", "",
             "| " + " | ".join(header) + " |", "|---:|" + "---:|" * (len(header) - 1)]
    behind: dict[tuple[str, int], list[float]] = {k: [] for k in fast}
    for w in scales:  # a cell stays "–" where an interrupted run has not measured its setting yet
        cells = [f"{w:g}"] + [f"{at[(s, n, w)].show('fidelity')} / {at[(s, n, w)].show('fd')}"
                              if (s, n, w) in at else "–" for s, n in lines_of]
        for s, n in fast:
            for _, r in ddims:
                a, b = at.get((s, n, w)), at.get(("ddim", r, w))
                cells.append(verdict({k: difference(a, b, k) for k in ("fidelity", "fd")}) if a and b else "–")
                if a and b and r == ref_steps and not not_worse(a, b):
                    behind[(s, n)].append(w)
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for (s, n), ws in behind.items():  # every line of the sweep has the chosen threshold
        name = setting_name(Setting(s, n, threshold=threshold))
        lines.append(f"{name} falls behind DDIM at {ref_steps} steps (significantly lower fidelity or higher Frechet "
                     f"distance) at w = {', '.join(f'{w:g}' for w in ws)}." if ws else
                     f"{name} does not fall behind DDIM at {ref_steps} steps at any swept w: every difference in "
                     "fidelity and Frechet distance is within the measured noise or in its favour.")
    return lines + [""]


def _schedules_section(results: Results, d: Defaults) -> list[str]:
    rows = results.sweep("schedules")
    curves = schedule_curves(rows)
    if "constant" not in curves or len(curves) < 2:
        return []
    s = rows[0].setting
    lines = ["## Guidance schedules", "",
             f"{setting_name(s)}, unconditional model. A schedule scales w per step "
             "(guidescope/guide/settings.py Schedule): constant inside an interval of original timesteps and 0 outside it, "
             "or a ramp over the whole range (ramp-up: 0 at the noisy end, w at the clean end).", "",
             "![Frechet distance and recall against fidelity, one curve per schedule](schedule_tradeoff.png)", "",
             "Each schedule against constant w at equal fidelity (both curves interpolated linearly in fidelity, "
             "replicate by replicate; 95% paired intervals; negative Frechet and positive recall differences "
             "favour the schedule). The levels are the fidelities of the constant-w points.", "",
             "| schedule | at fidelity | Frechet diff. | recall diff. | verdict |", "|---|---:|---:|---:|---|"]
    elsewhere = []
    for m in sorted(curves["constant"], key=lambda m: m.scores.fidelity):
        for c in compare_schedules(curves, m.scores.fidelity):
            lines.append(f"| {c.schedule} | {c.fidelity:.1%} (constant w = {m.setting.scale:g}) | {c.fd.text(2)} | "
                         f"{c.recall.text(3)} | {c.verdict} |")
            if c.verdict == "better":
                elsewhere.append(f"{c.schedule} at {c.fidelity:.1%}")
    chosen = not (d.schedule == "constant" and d.interval is None)
    verdict_line = (f"The {d.schedule} schedule over timesteps {d.interval[0]}-{d.interval[1]} beats constant w at "
                    "the default's fidelity, so the app defaults to it" if chosen
                    else "No schedule beats constant w at the default's fidelity")
    others = ("Significantly better anywhere on the curves: " + ", ".join(elsewhere) if elsewhere
              else "Nowhere on the swept curves is a schedule significantly better than constant w")
    return lines + ["", f"**{verdict_line}**: {d.schedule_reason}. {others}.", "",
                    *_table(sorted(rows, key=lambda m: (m.setting.schedule_name, m.setting.scale)),
                            [SCHEDULE, SCALE, *METRICS, SECONDS]), ""]


def _thresholds_section(results: Results) -> list[str]:
    rows = results.sweep("thresholds")
    dynamic = {m.setting.scale: m for m in rows if m.setting.threshold == "dynamic"}
    pairs = [(c, dynamic[c.setting.scale]) for c in sorted(rows, key=lambda m: m.setting.scale)
             if c.setting.threshold == "clip" and c.setting.scale in dynamic]
    if not pairs:
        return []
    s = rows[0].setting
    lines = ["## Dynamic thresholding", "",
             f"{sampler_name(s.sampler)} at {s.steps} steps. Dynamic thresholding (Saharia et al. 2022, percentile 99.5%) "
             "against the static clip of x-hat_0 (to [-1, 1] in pixels; to the latents' measured range in a latent "
             "space); differences are dynamic - clip (95% paired intervals).",
             "", *_table([m for pair in pairs for m in pair], [SCALE, THRESHOLD, *METRICS, SECONDS]), "",
             "| w | fidelity diff. | Frechet diff. | precision diff. | recall diff. | verdict |",
             "|---:|---:|---:|---:|---:|---|"]
    for clip, dynamic in pairs:
        diffs = {k: difference(dynamic, clip, k) for k in Scores._fields}
        lines.append(f"| {clip.setting.scale:g} | {diffs['fidelity'].text(1, True)} | {diffs['fd'].text(2)} | "
                     f"{diffs['precision'].text(3)} | {diffs['recall'].text(3)} | {verdict(diffs)} |")
    return lines + [""]


def _simple_section(results: Results, sweep: str, title: str, note: str) -> list[str]:
    rows = results.sweep(sweep)
    if not rows:
        return []
    rows = sorted(rows, key=lambda m: (m.setting.cfg_scale or 0, m.setting.scale))
    return [f"## {title}", "", note, "", *_table(rows, [SAMPLER, STEPS, SCALE, CFG, *METRICS, SECONDS]), ""]


def write_results_page(results: Results, defaults: Defaults, out: Path) -> None:
    """OUT/RESULTS.md and its figures."""
    lines = [*_header(results), *_defaults_section(defaults, results), *_classifier_section(results),
             *_samplers_section(results, defaults), *_schedules_section(results, defaults),
             *_thresholds_section(results),
             *_simple_section(results, "cfg", "Classifier-free guidance",
                              "eps-tilde = (1 + w) eps(x, c) - w eps(x); w = 0 is the conditional model."),
             *_simple_section(results, "combined", "Both combined",
                              "Classifier guidance added on top of the classifier-free prediction.")]
    (out / "RESULTS.md").write_text("\n".join(lines) + "\n")
    plots.guidance_tradeoff(results.sweep("classifier"), results.sweep("cfg"), out / "guidance_tradeoff.png")
    if results.sweep("steps"):
        plots.sampler_steps(results.sweep("steps"), out / "sampler_steps.png")
    curves = schedule_curves(results.sweep("schedules"))
    if curves:
        plots.schedule_tradeoff(curves, out / "schedule_tradeoff.png")

"""The report's figures, each from the measurements alone; error bars are the bootstrap half-widths."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .measure import Measurement, sampler_name


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _errorbar(ax, xs, rows: Sequence[Measurement], metric: str, **style):
    ax.errorbar(xs, [getattr(m.scores, metric) for m in rows], yerr=[m.half_width(metric) for m in rows],
                capsize=2, marker="o", markersize=3, **style)


def _save(plt, fig, path: Path) -> None:
    for ax in fig.axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def guidance_tradeoff(classifier: Sequence[Measurement], cfg: Sequence[Measurement], path: Path) -> None:
    """Fidelity, precision, recall (left) and Frechet distance (right) against w, for classifier
    guidance (solid) and classifier-free guidance (dashed)."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for rows, key, line, label in ((classifier, "scale", "-", "classifier guidance"),
                                   (cfg, "cfg_scale", "--", "classifier-free")):
        rows = sorted(rows, key=lambda m: getattr(m.setting, key))
        if not rows:
            continue
        xs = [getattr(m.setting, key) for m in rows]
        for metric, color in (("fidelity", "C0"), ("precision", "C1"), ("recall", "C2")):
            _errorbar(left, xs, rows, metric, linestyle=line, color=color, label=f"{metric} ({label})")
        _errorbar(right, xs, rows, "fd", linestyle=line, color="C3", label=label)
    left.set(xlabel="guidance scale w", ylabel="share", ylim=(0, 1.02), title="fidelity rises, diversity falls")
    right.set(xlabel="guidance scale w", ylabel="Frechet distance (evaluator features)", title="sample quality")
    left.legend(fontsize=7)
    right.legend(fontsize=8)
    _save(plt, fig, path)


def sampler_steps(rows: Sequence[Measurement], path: Path) -> None:
    """Fidelity (left) and Frechet distance (right) against network evaluations, one line per sampler:
    solid with the clip of x-hat_0, dashed with dynamic thresholding (dotted: none)."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    samplers = sorted({m.setting.sampler for m in rows})
    for sampler, threshold in sorted({(m.setting.sampler, m.setting.threshold) for m in rows}):
        line = sorted((m for m in rows if (m.setting.sampler, m.setting.threshold) == (sampler, threshold)),
                      key=lambda m: m.setting.steps)
        xs = [m.setting.steps for m in line]
        label = sampler_name(sampler) + ("" if threshold == "clip" else f", {threshold}")
        style = dict(color=f"C{samplers.index(sampler)}", linestyle=_LINESTYLES[threshold], label=label)
        _errorbar(left, xs, line, "fidelity", **style)
        _errorbar(right, xs, line, "fd", **style)
    steps = sorted({m.setting.steps for m in rows})
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_xticks(steps, [str(s) for s in steps])
        ax.minorticks_off()
        ax.legend(fontsize=8)
    left.set(xlabel="network evaluations (steps)", ylabel="fidelity", title="fidelity by step count")
    right.set(xlabel="network evaluations (steps)", ylabel="Frechet distance", title="sample quality by step count")
    _save(plt, fig, path)


_LINESTYLES = {"clip": "-", "dynamic": "--", "none": ":"}


def schedule_tradeoff(curves: dict[str, list[Measurement]], path: Path) -> None:
    """Frechet distance (left) and recall (right) against fidelity, one curve per schedule, each
    over the swept w; error bars in both directions."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for k, (name, curve) in enumerate(curves.items()):
        curve = sorted(curve, key=lambda m: m.scores.fidelity)
        xs = [m.scores.fidelity for m in curve]
        xerr = [m.half_width("fidelity") for m in curve]
        for ax, metric in zip(axes, ("fd", "recall")):
            ax.errorbar(xs, [getattr(m.scores, metric) for m in curve], xerr=xerr,
                        yerr=[m.half_width(metric) for m in curve], capsize=2, marker="o", markersize=3,
                        color=f"C{k}", label=name, linewidth=2.2 if name == "constant" else 1.2)
    axes[0].set(xlabel="fidelity", ylabel="Frechet distance (lower is better)", title="quality against fidelity")
    axes[1].set(xlabel="fidelity", ylabel="recall (higher is better)", title="diversity against fidelity")
    axes[1].legend(fontsize=7, title="schedule (timesteps guided)", title_fontsize=7)
    _save(plt, fig, path)

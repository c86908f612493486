"""Does guidance trade diversity for fidelity? Sweeps guidance strengths and step counts and
judges the samples with the separate evaluator network.

    python -m guidance.evaluate --checkpoints checkpoints/fashion-mnist --out docs

For every setting, n samples per class are drawn with the same seeds (so every strength starts
from the same noise) and measured in the evaluator's penultimate features against the test set:
fidelity (share assigned to the requested class), Frechet distance, k-NN precision and recall.
Writes OUT/results.json (rows, rewritten after each one), OUT/RESULTS.md, OUT/guidance_tradeoff.png,
OUT/samples_*.png, and CHECKPOINTS/defaults.json (the app's default scale and step count).
`--report-only` rebuilds the report and plots from OUT/results.json.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .checkpoints import CheckpointError, load_bundle
from .data import DataError, load_dataset
from .guide import Guidance, GuidedDenoiser
from .images import grid
from .metrics import frechet_distance, noisy_accuracy_by_quarter, precision_recall
from .runtime import configure
from .samplers import SharedNoise, final, sample


@dataclass(frozen=True)
class Setting:
    sweep: str                      # which table the row belongs to
    scale: float                    # classifier guidance w
    cfg_scale: float | None         # classifier-free w_cfg; None = unconditional model (null label)
    steps: int
    sampler: str = "ddim"


def parse_floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m guidance.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoints", default="checkpoints/fashion-mnist")
    p.add_argument("--out", default="docs", help="folder for RESULTS.md, results.json and plots")
    p.add_argument("--data-dir", help="folder with the Fashion-MNIST idx files (default: Debian's)")
    p.add_argument("--n-per-class", type=int, default=100)
    p.add_argument("--n-real", type=int, default=10_000, help="test images to compare against (and training images for the floor)")
    p.add_argument("--scales", type=parse_floats, default=parse_floats("0,0.5,1,2,3,5,8,12"))
    p.add_argument("--cfg-scales", type=parse_floats, default=parse_floats("0,0.5,1,2,4"))
    p.add_argument("--combined-cfg", type=float, default=1.0, help="CFG scale under the combined sweep")
    p.add_argument("--combined-scales", type=parse_floats, default=parse_floats("0.5,1,2,4"))
    p.add_argument("--steps", type=int, default=50, help="DDIM steps for the strength sweeps")
    p.add_argument("--ddim-steps", type=lambda s: [int(v) for v in s.split(",")], default=[10, 25, 50, 100])
    p.add_argument("--ddpm-steps", type=lambda s: [int(v) for v in s.split(",")], default=[50, 250, 1000])
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--report-only", action="store_true", help="rebuild RESULTS.md and plots from results.json")
    p.add_argument("--readme", default="README.md", help="README whose results section to refresh (if it has the markers)")
    args = p.parse_args(argv)
    if args.n_per_class < 4:
        p.error("--n-per-class must be at least 4 (k-NN recall uses k = 3)")
    if any(w < 0 for w in args.scales + args.cfg_scales + args.combined_scales):
        p.error("guidance scales must be non-negative")
    return args


# -- sampling and features --------------------------------------------------------------------

def draw(bundle, setting: Setting, labels: torch.Tensor, seed: int, batch_size: int, device) -> torch.Tensor:
    """Samples (N, C, H, W) in [-1, 1] for the requested labels; chunk k always uses seed + k,
    so every setting sees the same noise."""
    model = GuidedDenoiser(bundle.unet, bundle.classifier, bundle.unet.null_label)
    diffusion = bundle.diffusion(setting.steps)
    c, h = bundle.unet.config.in_channels, bundle.unet.config.image_size
    out = []
    for k, chunk in enumerate(labels.split(batch_size)):
        guidance = Guidance.make(chunk, setting.scale, setting.cfg_scale, batch_size=len(chunk), diagnostics=False)
        steps = sample(model, diffusion, (len(chunk), c, h, h), guidance, SharedNoise(seed + k),
                       setting.sampler, device=device)
        out.append(final(steps).sample.cpu())
    return torch.cat(out)


@torch.no_grad()
def judge(evaluator, images: torch.Tensor, device, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """Evaluator (features (N, D), predicted classes (N,)) for images in [-1, 1]."""
    feats, preds = [], []
    for x in images.split(batch_size):
        f = evaluator.features(x.to(device))
        feats.append(f.float().cpu())
        preds.append(evaluator.net.get_classifier()(f).argmax(1).cpu())
    return torch.cat(feats), torch.cat(preds)


def measure(bundle, setting, labels, real_feats, args, device) -> tuple[dict, torch.Tensor]:
    start = time.perf_counter()
    images = draw(bundle, setting, labels, args.seed, args.batch_size, device)
    seconds = time.perf_counter() - start
    feats, preds = judge(bundle.evaluator, images, device)
    n_classes = len(bundle.class_names)
    per_class = [float((preds[labels == c] == c).float().mean()) for c in range(n_classes)]
    pr = precision_recall(real_feats[torch.randperm(len(real_feats), generator=torch.Generator().manual_seed(0))[:len(feats)]], feats)
    row = {**asdict(setting), "fidelity": float((preds == labels).float().mean()), "per_class": per_class,
           "fd": frechet_distance(feats, real_feats), "precision": pr.precision, "recall": pr.recall,
           "histogram": torch.bincount(preds, minlength=n_classes).tolist(), "sample_seconds": round(seconds, 1)}
    return row, images


# -- choosing the app's defaults ----------------------------------------------------------------

FIDELITY_TARGET = 0.9      # share of samples in the requested class at the default scale
FD_TARGET = 2.0            # Frechet distance at most this multiple of the unguided one


def choose_defaults(rows: list[dict]) -> dict:
    """Default scale: the smallest classifier scale that meets both targets (fidelity >= 90%,
    Frechet distance <= 2x unguided); failing that, the most faithful scale within the distance.
    Default steps: the fewest DDIM steps that still meet both targets at that scale, since each
    step costs the app's users time on a CPU."""
    sweep = [r for r in rows if r["sweep"] == "classifier"]
    base = next(r for r in sweep if r["scale"] == 0)

    def meets(r):
        return r["fidelity"] >= FIDELITY_TARGET and r["fd"] <= FD_TARGET * base["fd"]

    good = [r for r in sweep if r["scale"] > 0 and meets(r)]
    if good:
        pick = min(good, key=lambda r: r["scale"])
        why = (f"the smallest swept scale with fidelity >= {FIDELITY_TARGET:.0%} ({pick['fidelity']:.1%}) "
               f"and Frechet distance <= {FD_TARGET:g}x unguided ({pick['fd']:.2f} vs {base['fd']:.2f})")
    else:
        within = [r for r in sweep if r["scale"] > 0 and r["fd"] <= FD_TARGET * base["fd"]] or sweep
        pick = max(within, key=lambda r: r["fidelity"])
        why = (f"no swept scale met both targets; this is the most faithful within {FD_TARGET:g}x the unguided "
               f"Frechet distance ({pick['fidelity']:.1%}, {pick['fd']:.2f} vs {base['fd']:.2f})")
    defaults = {"scale": pick["scale"], "scale_reason": why, "steps": pick["steps"], "sampler": "ddim",
                "steps_reason": f"the strength sweep ran at {pick['steps']} DDIM steps"}
    ddim = sorted((r for r in rows if r["sweep"] == "steps" and r["sampler"] == "ddim"
                   and r["scale"] == pick["scale"]), key=lambda r: r["steps"])
    enough = [r for r in ddim if meets(r)]
    if enough:
        steps = enough[0]
        defaults["steps"] = steps["steps"]
        defaults["steps_reason"] = (f"the fewest swept DDIM step counts that still meet both targets at this scale "
                                    f"(fidelity {steps['fidelity']:.1%}, Frechet distance {steps['fd']:.2f})")
    return defaults


# -- the report ---------------------------------------------------------------------------------

def _fmt_cfg(v):
    return "uncond." if v is None else f"{v:g}"


def _table(rows: list[dict]) -> list[str]:
    lines = ["| sampler | steps | classifier w | CFG w | fidelity | Frechet dist. | precision | recall | sampling s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['sampler'].upper()} | {r['steps']} | {r['scale']:g} | {_fmt_cfg(r['cfg_scale'])} | {r['fidelity']:.1%} | "
              f"{r['fd']:.2f} | {r['precision']:.3f} | {r['recall']:.3f} | {r['sample_seconds']} |" for r in rows]
    return lines


def write_report(results: dict, out: Path):
    rows, info = results["rows"], results["info"]
    names = info["class_names"]
    by = {s: [r for r in rows if r["sweep"] == s] for s in ("classifier", "cfg", "combined", "steps")}
    lines = ["# Evaluation results", "",
             f"Written by `{info['command']}` on {info['device']} ({info['n_per_class']} samples per class "
             f"= {info['n_per_class'] * len(names)} per setting, the same seeds at every setting). "
             "Every number below comes from that script; `--report-only` rebuilds this page from results.json.", "",
             "Fidelity: share of samples the evaluator assigns to the requested class. Frechet distance, precision "
             "and recall (k = 3) use the evaluator's penultimate features against the "
             f"{info['n_real']} test images.", "",
             f"- Evaluator ({info['evaluator']}): test accuracy {info['evaluator_test_acc']:.2%}.",
             f"- Frechet distance floor ({info['n_real']} training images against the test images): {info['fd_floor']:.2f}.",
             "- Guidance classifier accuracy on noisy test images, by timestep quarter: "
             + ", ".join(f"t in [{q * 25}%, {(q + 1) * 25}%) of T: {a:.1%}" for q, a in enumerate(info["classifier_acc"])) + ".",
             ""]
    if "defaults" in results:
        d = results["defaults"]
        lines += ["## The app's defaults", "", f"- Classifier-guidance scale w = {d['scale']:g}: {d['scale_reason']}.",
                  f"- {d['steps']} {d['sampler'].upper()} steps: {d['steps_reason']}.", ""]
    if by["classifier"]:
        lines += ["## Classifier guidance on the unconditional model", "",
                  "The UNet gets the null label; only the classifier's gradient steers.", "", *_table(by["classifier"]), "",
                  "![fidelity, precision, recall and Frechet distance against the guidance scale](guidance_tradeoff.png)", "",
                  "Per-class fidelity:", "",
                  "| w | " + " | ".join(names) + " |", "|---:|" + "---:|" * len(names)]
        lines += [f"| {r['scale']:g} | " + " | ".join(f"{v:.0%}" for v in r["per_class"]) + " |" for r in by["classifier"]]
        base = next((r for r in by["classifier"] if r["scale"] == 0), None)
        if base:
            h = base["histogram"]
            lines += ["", "Unconditional samples (w = 0), as the evaluator classifies them "
                      f"(most / least frequent = {max(h) / max(min(h), 1):.2f}):", "",
                      "| " + " | ".join(names) + " |", "|" + "---:|" * len(names), "| " + " | ".join(map(str, h)) + " |"]
        lines += ["", "![one sample per class (columns) at each scale (rows), same noise in every row](samples_classifier.png)", ""]
    for key, title, note in (("cfg", "Classifier-free guidance", "eps-tilde = (1 + w) eps(x, c) - w eps(x); w = 0 is the conditional model."),
                             ("combined", "Both combined", "Classifier guidance added on top of the classifier-free prediction."),
                             ("steps", "Step counts", "At the default classifier-guidance scale on the unconditional model.")):
        if by[key]:
            lines += [f"## {title}", "", note, "", *_table(by[key]), ""]
    (out / "RESULTS.md").write_text("\n".join(lines) + "\n")
    plot(rows, out / "guidance_tradeoff.png")


def write_model_card(folder: Path, results: dict):
    """CHECKPOINTS/README.md from the configs beside the weights and the evaluation results."""
    from safetensors import safe_open

    info, d = results["info"], results.get("defaults")
    lines = ["# Fashion-MNIST checkpoints", "",
             "Written by `python -m guidance.evaluate` from the JSON configs in this folder and the evaluation "
             "results (`docs/RESULTS.md`). Data: Fashion-MNIST (60,000 training and 10,000 test images, 28x28 grey, "
             "10 classes) from Debian's `dataset-fashion-mnist`.", "",
             "| file | network | parameters | training command | steps | wall time | device |",
             "|---|---|---:|---|---:|---:|---|"]
    for name, what in (("unet", "eps-prediction UNet (EMA weights), null label for CFG"),
                       ("classifier", "noise-conditioned classifier p(c given x_t, t), guides"),
                       ("evaluator", "clean-image timm ResNet, judges only")):
        meta = json.loads((folder / f"{name}.json").read_text())
        with safe_open(folder / f"{name}.safetensors", "pt") as f:
            params = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
        tr = meta.get("training", {})
        lines.append(f"| {name}.safetensors | {what} | {params / 1e6:.2f} M | `{tr.get('command', '?')}` | "
                     f"{tr.get('steps', '?')} | {tr.get('wall_time_minutes', '?')} min | {tr.get('device', '?')} |")
    lines += ["", "The three were trained at once on one GPU by `scripts/train_all.sh` (each network's wall time above "
              "is shared time on that device). On a CPU, run the same commands one at a time with `--device cpu`; "
              "`--resume` continues from `train-KIND/state.safetensors`.", "",
              "## Evaluation", "",
              f"- Evaluator test accuracy: {info['evaluator_test_acc']:.2%}.",
              "- Guidance classifier accuracy on noisy test images by timestep quarter: "
              + ", ".join(f"{a:.1%}" for a in info["classifier_acc"]) + "."]
    base = next((r for r in results["rows"] if r["sweep"] == "classifier" and r["scale"] == 0), None)
    pick = next((r for r in results["rows"] if d and r["sweep"] == "classifier" and r["scale"] == d["scale"]), None)
    if base and pick:
        h = base["histogram"]
        lines += [f"- Unguided (w = 0): Frechet distance {base['fd']:.2f} (floor {info['fd_floor']:.2f}), "
                  f"class balance most/least {max(h) / max(min(h), 1):.2f}.",
                  f"- Default w = {d['scale']:g}: fidelity {pick['fidelity']:.1%}, Frechet distance {pick['fd']:.2f}, "
                  f"precision {pick['precision']:.3f}, recall {pick['recall']:.3f} (unguided {base['precision']:.3f} / "
                  f"{base['recall']:.3f}); the app's default is {d['steps']} {d['sampler'].upper()} steps."]
    lines += ["", "Full tables and plots: [docs/RESULTS.md](../../docs/RESULTS.md)."]
    (folder / "README.md").write_text("\n".join(lines) + "\n")


README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"


def update_readme(path: Path, results: dict):
    """Replace the text between the results markers in the README with the classifier-guidance sweep."""
    if not path.is_file():
        return
    text = path.read_text()
    if README_START not in text or README_END not in text:
        return
    rows = [r for r in results["rows"] if r["sweep"] == "classifier"]
    d = results.get("defaults", {})
    table = ["| classifier w | fidelity | Frechet dist. | precision | recall |", "|---:|---:|---:|---:|---:|"]
    table += [f"| {r['scale']:g}{' (default)' if r['scale'] == d.get('scale') else ''} | {r['fidelity']:.1%} | "
              f"{r['fd']:.2f} | {r['precision']:.3f} | {r['recall']:.3f} |" for r in rows]
    info = results["info"]
    body = [f"Unconditional model steered by the classifier alone, {info['n_per_class']} samples per class, "
            f"{rows[0]['steps'] if rows else '?'} DDIM steps, judged by a separate evaluator "
            f"({info['evaluator_test_acc']:.1%} test accuracy). Written by `python -m guidance.evaluate`.", "", *table]
    head, rest = text.split(README_START, 1)
    tail = rest.split(README_END, 1)[1]
    path.write_text(head + README_START + "\n" + "\n".join(body) + "\n" + README_END + tail)


def plot(rows: list[dict], path: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for sweep, key, style, label in (("classifier", "scale", "-", "classifier guidance"), ("cfg", "cfg_scale", "--", "classifier-free")):
        rs = sorted((r for r in rows if r["sweep"] == sweep), key=lambda r: r[key])
        if not rs:
            continue
        xs = [r[key] for r in rs]
        for metric, color in (("fidelity", "C0"), ("precision", "C1"), ("recall", "C2")):
            left.plot(xs, [r[metric] for r in rs], style, color=color, marker="o", label=f"{metric} ({label})")
        right.plot(xs, [r["fd"] for r in rs], style, color="C3", marker="o", label=label)
    left.set(xlabel="guidance scale w", ylabel="share", ylim=(0, 1.02), title="fidelity rises, diversity falls")
    right.set(xlabel="guidance scale w", ylabel="Frechet distance (evaluator features)", title="sample quality")
    left.legend(fontsize=7)
    right.legend(fontsize=8)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- the run ------------------------------------------------------------------------------------

def run(args) -> dict:
    device = torch.device(args.device)
    bundle = load_bundle(args.checkpoints, device, need_evaluator=True)
    test = load_dataset("test", args.data_dir)
    test = test._replace(images=test.images[:args.n_real], labels=test.labels[:args.n_real])
    train = load_dataset("train", args.data_dir)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    real_feats, real_preds = judge(bundle.evaluator, test.images, device)
    floor_feats, _ = judge(bundle.evaluator, train.images[:args.n_real], device)
    info = {"command": "python -m guidance.evaluate " + " ".join(sys.argv[1:]), "device": str(device),
            "n_per_class": args.n_per_class, "n_real": len(test.images), "class_names": list(bundle.class_names),
            "evaluator": "timm ResNet-18 layout, narrow", "evaluator_test_acc": float((real_preds == test.labels).float().mean()),
            "fd_floor": frechet_distance(floor_feats, real_feats),
            "classifier_acc": noisy_accuracy_by_quarter(bundle.classifier, bundle.diffusion(), test.images, test.labels)}
    results = {"info": info, "rows": []}
    labels = torch.arange(len(bundle.class_names)).repeat_interleave(args.n_per_class)

    def add(setting: Setting):
        row, images = measure(bundle, setting, labels, real_feats, args, device)
        results["rows"].append(row)
        (out / "results.json").write_text(json.dumps(results, indent=1))
        print(f"{setting}: fidelity {row['fidelity']:.3f} fd {row['fd']:.2f} precision {row['precision']:.3f} "
              f"recall {row['recall']:.3f} ({row['sample_seconds']} s)", flush=True)
        return images

    first = []
    for w in args.scales:
        images = add(Setting("classifier", w, None, args.steps))
        first.append(images.view(len(bundle.class_names), args.n_per_class, *images.shape[1:])[:, 0])
    grid(torch.stack(first).flatten(0, 1), ncols=len(bundle.class_names), upscale=2).save(out / "samples_classifier.png")
    defaults = choose_defaults(results["rows"])
    for w in args.cfg_scales:
        add(Setting("cfg", 0.0, w, args.steps))
    for steps in args.ddim_steps:
        add(Setting("steps", defaults["scale"], None, steps, "ddim"))
    for w in args.combined_scales:
        add(Setting("combined", w, args.combined_cfg, args.steps))
    for steps in args.ddpm_steps:
        add(Setting("steps", defaults["scale"], None, steps, "ddpm"))
    return results


def main(argv=None) -> int:
    args = parse_args(argv)
    configure(args.device, args.threads)
    out = Path(args.out)
    try:
        if args.report_only:
            results = json.loads((out / "results.json").read_text())
        else:
            results = run(args)
        results["defaults"] = choose_defaults(results["rows"])
        (out / "results.json").write_text(json.dumps(results, indent=1))
        (Path(args.checkpoints) / "defaults.json").write_text(json.dumps(results["defaults"], indent=2) + "\n")
    except (CheckpointError, DataError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    write_report(results, out)
    write_model_card(Path(args.checkpoints), results)
    update_readme(Path(args.readme), results)
    print(f"wrote {out / 'RESULTS.md'} and {Path(args.checkpoints) / 'README.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

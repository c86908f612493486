"""How good is an autoencoder as the first stage of latent diffusion: docs/AUTOENCODER.md.

    python scripts/autoencoder_report.py --evaluator checkpoints/fashion-mnist \
        --autoencoder NAME=FOLDER [--autoencoder NAME=FOLDER ...] [--n 2000] [--out docs/AUTOENCODER.md]

For each autoencoder (FOLDER/autoencoder.safetensors): its latent shape and the reduction f, its
parameters and decode FLOPs per image, its training time, and on the first --n held-out
Fashion-MNIST images: the reconstruction error (MSE and PSNR, images in [-1, 1]), the accuracy
of the project's evaluator on the reconstructions against on the originals, and the Frechet
distance of the reconstructions to the held-out images in the evaluator's features, against the
floor (n training images to the same held-out images). Reconstructions cap what a latent
diffusion model can reach: its samples can be no closer to the data than its decoder can draw.
"""
from __future__ import annotations

import argparse
import datetime
import math
import os
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from guidescope.checkpoints import load  # noqa: E402
from guidescope.cli import configure  # noqa: E402
from guidescope.evaluation.measure import judge  # noqa: E402
from guidescope.metrics import RealReference  # noqa: E402
from guidescope.training import data  # noqa: E402


def _logged_psnr(log: Path, step: int) -> str:
    """The held-out PSNR a training log recorded at a save at `step`, or '–'."""
    import json

    if not log.is_file():
        return "–"
    for line in log.read_text().splitlines():
        record = json.loads(line)
        if record.get("step") == step and "test_psnr" in record:
            return f"{record['test_psnr']:.2f} dB"
    return "–"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--evaluator", default="checkpoints/fashion-mnist", help="folder of the evaluator that judges")
    p.add_argument("--autoencoder", action="append", required=True, metavar="NAME=FOLDER")
    p.add_argument("--n", type=int, default=2000, help="held-out images scored")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="docs/AUTOENCODER.md")
    p.add_argument("--note", default="", help="a paragraph of Markdown after the table (what the table shows)")
    p.add_argument("--at-step", type=int, default=1500,
                   help="also report each training log's held-out PSNR at this step: equal training, compared")
    args = p.parse_args(argv)
    configure("cpu", args.threads)
    evaluator, _ = load(args.evaluator, "evaluator")
    train, test = data.load(data.DataSource("fashion-mnist"))
    originals, labels = test.images[:args.n], test.labels[:args.n]
    real_features, real_predictions = judge(evaluator, originals)
    reference = RealReference(real_features, real_features)
    floor = reference.frechet(judge(evaluator, train.images[:args.n])[0])
    base_acc = float((real_predictions.cpu() == labels).double().mean())
    rows = []
    for item in args.autoencoder:
        name, folder = item.rsplit("=", 1)  # the name may hold "=", a folder seldom does
        autoencoder, meta = load(folder, "autoencoder")
        with torch.no_grad():
            recon = torch.cat([autoencoder(x) for x in originals.split(500)]).clamp(-1, 1)
        mse = float((recon - originals).pow(2).mean())
        features, predictions = judge(evaluator, recon)
        with FlopCounterMode(display=False) as counter:
            autoencoder.decode(autoencoder.encode(originals[:1])[0])
        decode_flops = counter.get_total_flops()
        cfg, training = autoencoder.config, meta.get("training", {})
        early = _logged_psnr(Path(folder) / "train-autoencoder.log", args.at_step)
        c, h, _ = cfg.latent_shape
        rows.append(f"| {name} | {c}x{h}x{h} | {cfg.image_size // h} | {sum(q.numel() for q in autoencoder.parameters()) / 1e6:.2f} M "
                    f"| {decode_flops / 1e6:.0f} | {training.get('wall_time_minutes', '?')} min, {training.get('steps', '?')} steps "
                    f"| {mse:.4f} | {10 * math.log10(4 / mse):.2f} dB | {float((predictions.cpu() == labels).double().mean()):.2%} "
                    f"| {reference.frechet(features):.2f} | {early} |")
    load_avg = os.getloadavg()[0]
    page = ["# The autoencoder of the latent bundle", "",
            f"Written by `python scripts/autoencoder_report.py {' '.join(sys.argv[1:] if argv is None else argv)}` "
            f"on {datetime.date.today()} (CPU, {args.threads} threads, load average {load_avg:.1f} at the end; "
            "no figure here depends on speed). "
            f"Scored on the first {args.n} held-out Fashion-MNIST images by the evaluator of `{args.evaluator}`.", "",
            f"- Originals: evaluator accuracy {base_acc:.2%}; Frechet distance floor ({args.n} training images to "
            f"the held-out ones) {floor:.2f}.", "",
            "| autoencoder | latent | f | parameters | encode+decode MFLOP/image | training | MSE | PSNR | "
            "evaluator accuracy on reconstructions | Frechet distance of reconstructions | "
            f"PSNR at step {args.at_step} (training log) |",
            "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|", *rows, "",
            f"The last column is each run's own held-out score at step {args.at_step} (batch 64, the same "
            "schedule of steps), from its training log: the same training for every row, where the other "
            "columns score each network as it was finally trained.", ""]
    if args.note:
        page += [args.note, ""]
    Path(args.out).write_text("\n".join(page))
    print("\n".join(page))
    return 0


if __name__ == "__main__":
    sys.exit(main())

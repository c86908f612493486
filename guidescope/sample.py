"""Sample images of one class from a checkpoint folder.

    python -m guidescope.sample --checkpoints checkpoints/fashion-mnist --class Bag --scale 4 --out bags.png

Without --cfg-scale the UNet gets the null label (the unconditional model): --scale 0 gives
unconditional samples, --scale W pure classifier guidance. --cfg-scale 0 is the plain
conditional model, --cfg-scale W2 the classifier-free combination (both can be on at once).
--interval, --schedule and --threshold shape the guidance per step and the x-hat_0 clipping.
OUT ending .npz holds `images` (uint8, (N, H, W) for one channel, else (N, C, H, W)) and
`labels` (int64, (N,)); OUT ending .png is a grid. Image i depends on --seed and i only, not
on --batch-size (guidescope/noise.py); the app and the evaluation draw the same images.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import cli
from .bundle import load_bundle
from .checkpoints import CheckpointError
from .cli import configure
from .generation import Samples, generate
from .guide import SCHEDULE_SHAPES, THRESHOLDS, NonFiniteError, Threshold
from .images import grid
from .networks.backend import BACKENDS, BackendError
from .parsing import class_index
from .request import SAMPLING_DEFAULTS, Request, Row, check, make_schedule
from .samplers import SAMPLERS

FORMATS = (".npz", ".png")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m guidescope.sample", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoints", required=True, help="folder with unet and classifier checkpoints")
    p.add_argument("--class", dest="class_label", required=True, help="class index or name (any case)")
    p.add_argument("--scale", type=float, default=0.0, help="classifier guidance w (default 0: off)")
    p.add_argument("--cfg-scale", type=float, default=None,
                   help="classifier-free w_cfg (default: none, the unconditional model)")
    p.add_argument("--steps", type=int, default=SAMPLING_DEFAULTS.steps, help=f"sampling steps, 1 to T (default {SAMPLING_DEFAULTS.steps})")
    p.add_argument("--sampler", choices=SAMPLERS, default=SAMPLING_DEFAULTS.sampler)
    p.add_argument("--eta", type=float, default=SAMPLING_DEFAULTS.eta, help=f"DDIM noise, 0 to 1 (default {SAMPLING_DEFAULTS.eta:g})")
    p.add_argument("--interval", type=int, nargs=2, metavar=("LO", "HI"), default=None,
                   help="guide only at original timesteps LO..HI (default: every step)")
    p.add_argument("--schedule", choices=SCHEDULE_SHAPES, default="constant",
                   help="guidance strength over the interval (ramps go linearly from 0 to w)")
    p.add_argument("--threshold", choices=THRESHOLDS, default="clip", help="what happens to x-hat_0")
    p.add_argument("--threshold-percentile", type=float, default=Threshold.percentile,
                   help="percentile of |x-hat_0| for --threshold dynamic")
    p.add_argument("--max-guidance-norm", type=float, default=None, help="clip the guidance term's L2 norm")
    p.add_argument("--n", type=int, default=16, help="number of images")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=SAMPLING_DEFAULTS.seed)
    p.add_argument("--out", required=True, help="FILE.npz or FILE.png")
    cli.add_device_arguments(p)
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="what runs the UNet forward pass (auto: the CPU runtime when it loads, else torch)")
    return p


def request_from_args(args, class_names, num_timesteps: int) -> Request:
    """The Request for the parsed arguments; ValueError names what is wrong."""
    schedule = make_schedule(args.schedule, None if args.interval is None else tuple(args.interval), num_timesteps)
    row = Row(class_index(args.class_label, class_names), args.scale, args.cfg_scale, schedule,
              Threshold(args.threshold, args.threshold_percentile))
    return Request((row,), images_per_row=args.n, steps=args.steps, sampler=args.sampler, eta=args.eta,
                   seed=args.seed, max_guidance_norm=args.max_guidance_norm)


def main(argv=None) -> int:
    p = parser()
    args = p.parse_args(argv)
    out = Path(args.out)
    if out.suffix.lower() not in FORMATS:
        p.error(f"--out must end in one of {', '.join(FORMATS)}, got {args.out!r}")
    cli.require_positive(p, args, "threads", "batch_size")
    try:
        device = torch.device(args.device)
    except RuntimeError as err:
        p.error(f"--device: {err}")
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    configure(device, args.threads)
    try:
        bundle = load_bundle(args.checkpoints, device, backend=args.backend)
        request = request_from_args(args, bundle.class_names, bundle.num_timesteps)
        check(request, len(bundle.class_names), bundle.num_timesteps, bundle.conditioning)  # before the bar
    except (CheckpointError, BackendError, ValueError) as err:
        p.error(str(err))
    samples = _sample(p, bundle, request, args.batch_size)
    if samples is None:
        return 1
    write(samples, out)
    label = request.rows[0].class_label
    print(f"wrote {args.n} images of class {label} ({bundle.class_names[label]}) to {out}")
    return 0


def _sample(p: argparse.ArgumentParser, bundle, request: Request, batch_size: int) -> Samples | None:
    """The request's images, batch_size at a time, with a progress bar of every step; None (with
    the error on stderr) for a run that diverged. A refused request is a usage error."""
    label = request.rows[0].class_label
    batches = -(-request.num_items // batch_size)
    with tqdm(total=batches * request.steps, unit="step", desc=bundle.class_names[label], dynamic_ncols=True) as bar:
        try:
            return generate(bundle, request, batch_size, on_step=lambda _: bar.update())
        except ValueError as err:
            bar.close()
            p.error(str(err))
        except NonFiniteError as err:
            bar.close()
            print(f"error: {err}", file=sys.stderr)
            return None


def write(samples: Samples, out: Path) -> None:
    """OUT.npz: images (N, H, W) for one channel, else (N, C, H, W), and labels; OUT.png: a grid."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".npz":
        images = samples.images.numpy()
        with open(out, "wb") as f:  # a path would get ".npz" appended unless it ends in lower case ".npz"
            np.savez_compressed(f, images=images[:, 0] if images.shape[1] == 1 else images,
                                labels=samples.labels.numpy())
    else:
        grid(samples.images.numpy()).save(out)


if __name__ == "__main__":
    sys.exit(main())

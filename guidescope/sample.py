"""Sample images of one class from a checkpoint folder.

    python -m guidescope.sample --checkpoints checkpoints/fashion-mnist --class Bag --out bags.png

A sampling flag left unset takes the value of the folder's defaults.json (what the evaluation
chose, which the app's page starts from too), else the library's (UNSET_FLAGS, the --help
epilog); the line printed at the end says the setting that ran and where it came from.
--unet unconditional gives the UNet the null label: --scale 0 gives unconditional samples, --scale
W pure classifier guidance. --unet conditional (which --cfg-scale alone implies) is the
class-conditional model, --cfg-scale W2 its classifier-free combination (0: plain); both kinds of
guidance can be on at once. --interval, --schedule and --threshold shape the guidance per step and
the x-hat_0 clipping. --guide training-free steers by a clean classifier through x-hat_0 instead
of the noise-aware one (guidescope.guide.training_free), at the setting defaults.json's
"training_free" record names (what the evaluation's search chose), any of its parameters set by
its flag; --guide-classifier DIR guides by another folder's guide_classifier. OUT ending .npz holds `images` (uint8, (N, H, W) for one channel, else
(N, C, H, W), at their own size) and `labels` (int64, (N,)); OUT ending .png is a grid, enlarged
--upscale times. Image i depends on --seed and i only, not on --batch-size (guidescope/noise.py);
the app and the evaluation draw the same images.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import cli
from .bundle import default_value, load_bundle, read_defaults
from .checkpoints import CheckpointError
from .cli import configure
from .generation import Samples, generate
from .guide import SCHEDULE_SHAPES, THRESHOLDS, NonFiniteError, Schedule, Threshold, TrainingFree
from .guide.training_free import LIBRARY_SETTING, METHODS, SMOOTHING_SCHEDULES, STRENGTH_SCHEDULES
from .images import grid
from .messages import choice
from .networks.backend import BACKENDS, BackendError
from .parsing import class_index, interval_text, parse_interval
from .request import SAMPLING_DEFAULTS, Request, Row, check, make_schedule
from .samplers import SAMPLERS, sampler_title

FORMATS = (".npz", ".png")
GUIDES = ("noise-aware", "training-free")
# The training-free setting's flags by field (guidescope.guide.TrainingFree), with their types.
METHOD_FLAGS = {"rho": float, "mu": float, "gamma": float, "recurrences": int, "iterations": int, "mc_samples": int,
                "rho_schedule": STRENGTH_SCHEDULES, "mu_schedule": STRENGTH_SCHEDULES,
                "gamma_schedule": SMOOTHING_SCHEDULES, "stop_at": float}
# What a training-free run takes from the top of defaults.json (the noise-aware setting's interval,
# schedule and w are not its own).
SHARED_WITH_NOISE_AWARE = ("unet", "cfg_scale", "eta", "seed", "threshold_percentile")
UNETS = ("unconditional", "conditional")  # eps(x_t, null), or eps(x_t, c) with classifier-free w_cfg
# Each sampling flag by its destination, which is also its name in defaults.json (as the app's
# AppDefaults names it), with the library's value where defaults.json names none; that value's
# type is the one defaults.json must give (guidescope.bundle.default_value).
LIBRARY_DEFAULTS = {
    "scale": Row.scale, "unet": UNETS[0], "cfg_scale": 0.0,  # w_cfg 0: the plain conditional model
    "steps": SAMPLING_DEFAULTS.steps, "sampler": SAMPLING_DEFAULTS.sampler, "eta": SAMPLING_DEFAULTS.eta,
    "seed": SAMPLING_DEFAULTS.seed, "interval": interval_text(Schedule.interval), "schedule": Schedule.shape,
    "threshold": Threshold.mode, "threshold_percentile": Threshold.percentile}
UNSET_FLAGS = ("An unset sampling flag takes the value the bundle's defaults.json names (CHECKPOINTS/defaults.json: "
               "what the evaluation chose, which the app starts from too), else the library's default shown with "
               "it; a flag given on the command line wins. The last line printed says the setting that ran.")
FLAG, BUNDLE, LIBRARY = "flag", "defaults.json", "library"  # where a setting came from


def _unset(name: str) -> str:
    """The help's note on an unset flag: defaults.json, else the library's value."""
    value = LIBRARY_DEFAULTS[name]
    return f"unset: defaults.json, else {f'{value:g}' if isinstance(value, float) else value}"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m guidescope.sample", description=__doc__.split("\n\n")[0],
                                epilog=UNSET_FLAGS)
    p.add_argument("--checkpoints", required=True, help="folder with unet and classifier checkpoints")
    p.add_argument("--class", dest="class_label", required=True, help="class index or name (any case)")
    p.add_argument("--scale", type=float, help=f"classifier guidance w ({_unset('scale')}: off)")
    p.add_argument("--unet", choices=UNETS, help="the null label or the class as the UNet's input "
                                                 f"({_unset('unet')}; --cfg-scale implies conditional)")
    p.add_argument("--cfg-scale", type=float,
                   help=f"classifier-free w_cfg of the conditional UNet ({_unset('cfg_scale')})")
    p.add_argument("--steps", type=int, help=f"sampling steps, 1 to T ({_unset('steps')})")
    p.add_argument("--sampler", choices=SAMPLERS, help=f"({_unset('sampler')})")
    p.add_argument("--eta", type=float, help=f"DDIM noise, 0 to 1 ({_unset('eta')})")
    p.add_argument("--interval", type=int, nargs=2, metavar=("LO", "HI"),
                   help=f"guide only at original timesteps LO..HI ({_unset('interval')}: every step)")
    p.add_argument("--schedule", choices=SCHEDULE_SHAPES,
                   help=f"guidance strength over the interval, ramps linear from 0 to w ({_unset('schedule')})")
    p.add_argument("--threshold", choices=THRESHOLDS, help=f"what happens to x-hat_0 ({_unset('threshold')})")
    p.add_argument("--threshold-percentile", type=float,
                   help=f"percentile of |x-hat_0| for --threshold dynamic ({_unset('threshold_percentile')})")
    p.add_argument("--max-guidance-norm", type=float, default=None, help="clip the guidance term's L2 norm")
    p.add_argument("--guide", choices=GUIDES, default=GUIDES[0],
                   help="noise-aware: the classifier of x_t at strength --scale (default); training-free: a clean "
                        "classifier through x-hat_0, at the setting defaults.json's training_free record names")
    p.add_argument("--guide-classifier", metavar="DIR", help="--guide training-free: the guide_classifier of DIR "
                   "(any timm architecture, saved as safetensors + JSON) instead of the checkpoint folder's")
    p.add_argument("--method", choices=tuple(METHODS), help="--guide training-free: TFG or one of its named special "
                   "cases (unset: defaults.json's, else tfg)")
    for name, kind in METHOD_FLAGS.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(kind, tuple):
            p.add_argument(flag, choices=kind, help=f"--guide training-free: {name.replace('_', ' ')}")
        else:
            p.add_argument(flag, type=kind, help=f"--guide training-free: {name.replace('_', ' ')}")
    p.add_argument("--n", type=int, default=16, help="number of images")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, help=f"({_unset('seed')})")
    p.add_argument("--out", required=True, help="FILE.npz or FILE.png")
    p.add_argument("--upscale", type=int, default=1, metavar="K",
                   help="PNG output: enlarge the grid K times, nearest neighbour (default 1); .npz keeps the "
                        "images' own size")
    cli.add_device_arguments(p)
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="what runs the UNet forward pass (auto: the CPU runtime when it loads, else torch)")
    return p


def fill_unset(args: argparse.Namespace, chosen: dict) -> dict[str, str]:
    """Set each sampling flag of args left unset (None) to the value chosen names (a bundle's
    defaults.json, read by guidescope.bundle.default_value), else to LIBRARY_DEFAULTS'; an interval
    as (LO, HI) or None. --cfg-scale without --unet means the conditional UNet. Returns where each
    setting came from: FLAG, BUNDLE or LIBRARY."""
    if args.unet is None and args.cfg_scale is not None:
        args.unet = "conditional"
    sources = {}
    for name, library in LIBRARY_DEFAULTS.items():
        if getattr(args, name) is not None:
            sources[name] = FLAG
            continue
        value = default_value(name, chosen[name], type(library)) if name in chosen else None
        sources[name] = LIBRARY if value is None else BUNDLE
        value = library if value is None else value
        setattr(args, name, parse_interval(value) if name == "interval" else value)
    return sources


def training_free_defaults(chosen: dict) -> dict:
    """What a --guide training-free run takes from a bundle's defaults.json: its "training_free"
    record (sampler, steps, threshold, the guidance schedule and interval, and the setting) and,
    from the top, SHARED_WITH_NOISE_AWARE."""
    record = chosen.get("training_free")
    record = record if isinstance(record, dict) else {}
    return {**{name: chosen[name] for name in SHARED_WITH_NOISE_AWARE if name in chosen},
            **{name: record[name] for name in ("sampler", "steps", "threshold", "schedule", "interval", "guide")
               if name in record}}


def training_free_setting(args, chosen: dict) -> TrainingFree:
    """The setting of --guide training-free: defaults.json's (chosen as training_free_defaults gives
    it; LIBRARY_SETTING where it names none), or --method's own, with each flag given set.
    ValueError names a parameter the method does not take."""
    try:
        base = TrainingFree(**chosen["guide"]) if isinstance(chosen.get("guide"), dict) else LIBRARY_SETTING
    except (TypeError, ValueError):
        base = LIBRARY_SETTING
    method = args.method or base.method
    kept = {name: getattr(base, name) for name in METHODS[method].free} if method == base.method else {}
    given = {name: getattr(args, name) for name in METHOD_FLAGS if getattr(args, name) is not None}
    return TrainingFree.make(method, **{**kept, **given})


def request_from_args(args, class_names, num_timesteps: int, guide: TrainingFree | None = None) -> Request:
    """The Request for the parsed arguments, their unset flags filled (fill_unset), guided by the
    training-free setting guide where there is one; ValueError names what is wrong."""
    schedule = make_schedule(args.schedule, None if args.interval is None else tuple(args.interval), num_timesteps)
    cfg_scale = None if choice(args.unet, "unet", UNETS) == "unconditional" else args.cfg_scale
    row = Row(class_index(args.class_label, class_names), args.scale, cfg_scale, schedule,
              Threshold(args.threshold, args.threshold_percentile), guide=guide)
    return Request((row,), images_per_row=args.n, steps=args.steps, sampler=args.sampler, eta=args.eta,
                   seed=args.seed, max_guidance_norm=args.max_guidance_norm)


def describe(request: Request) -> str:
    """The setting of a one-row request in words, e.g. "UniPC 8 steps, w 8 on the unconditional
    UNet, guidance constant at every step, dynamic threshold at 0.995, seed 0"."""
    row = request.rows[0]
    eta = f" (eta {request.eta:g})" if request.sampler == "ddim" else ""
    unet = "unconditional UNet" if row.cfg_scale is None else f"conditional UNet with w_cfg {row.cfg_scale:g}"
    where = "at every step" if row.schedule.interval is None else f"over t {interval_text(row.schedule.interval)}"
    percentile = f" at {row.threshold.percentile:g}" if row.threshold.mode == "dynamic" else ""
    norm = "" if request.max_guidance_norm is None else f", guidance norm clipped at {request.max_guidance_norm:g}"
    strength = f"w {row.scale:g}" if row.guide is None else f"{row.guide.describe()} (clean classifier through x-hat_0)"
    return (f"{sampler_title(request.sampler)} {request.steps} steps{eta}, {strength} on the {unet}, guidance "
            f"{row.schedule.shape} {where}, {row.threshold.mode} threshold{percentile}{norm}, seed {request.seed}")


def provenance(sources: dict[str, str], folder: Path) -> str:
    """Where the unset flags' values came from (sources as fill_unset returns them)."""
    chosen = ", ".join(f"--{name.replace('_', '-')}" for name, source in sources.items() if source == BUNDLE)
    if chosen:
        return f"{chosen} from {folder / 'defaults.json'}, other unset flags from the library's defaults"
    if LIBRARY in sources.values():
        return f"unset flags from the library's defaults: {folder / 'defaults.json'} names none"
    return "as flagged"


def main(argv=None) -> int:
    p = parser()
    args = p.parse_args(argv)
    out = Path(args.out)
    if out.suffix.lower() not in FORMATS:
        p.error(f"--out must end in one of {', '.join(FORMATS)}, got {args.out!r}")
    if args.unet == "unconditional" and args.cfg_scale is not None:
        p.error("--cfg-scale needs the class-conditional UNet: leave out --unet unconditional")
    cli.require_positive(p, args, "threads", "batch_size", "upscale")
    try:
        device = torch.device(args.device)
    except RuntimeError as err:
        p.error(f"--device: {err}")
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    configure(device, args.threads)
    given = [f"--{name.replace('_', '-')}" for name in ("method", "guide_classifier", *METHOD_FLAGS)
             if getattr(args, name) is not None]
    if args.guide == "noise-aware" and given:
        p.error(f"{', '.join(given)} set the training-free guidance: add --guide training-free")
    if args.guide == "training-free" and args.scale:
        p.error("--scale is the noise-aware classifier's strength; --guide training-free takes --rho and --mu")
    try:
        bundle = load_bundle(args.checkpoints, device, backend=args.backend,
                             guide_classifier_folder=args.guide_classifier)
    except (CheckpointError, BackendError) as err:
        p.error(str(err))
    chosen = read_defaults(bundle.folder)
    guide = None
    if args.guide == "training-free":
        chosen = training_free_defaults(chosen)
        args.scale = 0.0
    sources = fill_unset(args, chosen)
    try:
        if args.guide == "training-free":
            guide = training_free_setting(args, chosen)
        request = request_from_args(args, bundle.class_names, bundle.num_timesteps, guide)
        check(request, len(bundle.class_names), bundle.num_timesteps, bundle.conditioning)  # before the bar
    except ValueError as err:  # a value defaults.json gave is named as such
        p.error(f"{err} ({provenance(sources, bundle.folder)})" if BUNDLE in sources.values() else str(err))
    samples = _sample(p, bundle, request, args.batch_size)
    if samples is None:
        return 1
    write(samples, out, args.upscale)
    label = request.rows[0].class_label
    print(f"wrote {args.n} images of class {label} ({bundle.class_names[label]}) to {out}: {describe(request)} "
          f"({provenance(sources, bundle.folder)})")
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


def write(samples: Samples, out: Path, upscale: int = 1) -> None:
    """OUT.npz: images (N, H, W) for one channel, else (N, C, H, W), and labels, at their own size;
    OUT.png: a grid, enlarged upscale times with nearest neighbour."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".npz":
        images = samples.images.numpy()
        with open(out, "wb") as f:  # a path would get ".npz" appended unless it ends in lower case ".npz"
            np.savez_compressed(f, images=images[:, 0] if images.shape[1] == 1 else images,
                                labels=samples.labels.numpy())
    else:
        grid(samples.images.numpy(), upscale=upscale).save(out)


if __name__ == "__main__":
    sys.exit(main())

"""Training the diffusion UNet, the noise-conditioned classifier, the clean-image evaluator, the
autoencoder and the clean-image guide classifier.

    python -m guidescope.train unet       --out checkpoints/fashion-mnist --minutes 150
    python -m guidescope.train classifier --out checkpoints/fashion-mnist --minutes 20
    python -m guidescope.train evaluator  --out checkpoints/fashion-mnist --minutes 10
    python -m guidescope.train guide_classifier --out DIR --minutes 35 [--architecture NAME --model-args JSON]
    python -m guidescope.train all --image-folder FOLDER --out DIR --minutes 10    (then: python app.py --checkpoints DIR)
    torchrun --standalone --nproc_per_node 8 -m guidescope.train unet --out DIR --amp --channels-last --compile

Each run logs progress (tqdm and a JSON-lines log), writes its model every --save-every steps and
at the end, and keeps a resumable state under OUT/train-KIND/; --resume continues from it.
`all` trains the three networks in turn on one split of the data (seeds --seed, --seed + 1 and
--seed + 2, --minutes or --steps for each), then runs the evaluation at its smoke budget, which
writes the app's defaults and the model card into OUT and its tables into OUT/evaluation.
Under torchrun, --batch-size is the global batch, split evenly over the processes.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import fields
from pathlib import Path
from typing import Callable, NamedTuple, get_args, get_type_hints

import torch

from .. import cli
from ..cli import configure
from ..diffusion import SCHEDULES
from . import data, distributed
from .data import DataError
from .distributed import Context
from .loop import LoopConfig, Trainer
from .tasks import TASKS, Task

ALL = "all"
SEED_OFFSETS = {"unet": 0, "classifier": 1, "evaluator": 2}  # `all` trains these (pixel space), from different initial weights


def _levels(text: str) -> tuple[int, ...]:
    """'1,2,2' -> (1, 2, 2); '' -> ()."""
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _json_object(text: str) -> dict:
    """'{"depths": [2, 2]}' -> {"depths": [2, 2]}."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"depths\": [2, 2]}}', got {text!r}")
    return value


# The help of each field of the Task classes, which the command line sets, in the order --help lists
# them; each option's type and defaults come from the fields. Unset, each kind keeps its own default.
NETWORK_OPTIONS = {
    "lr": "AdamW learning rate",
    "weight_decay": "AdamW weight decay",
    "base_channels": "network width",
    "dropout": "dropout in the residual blocks",
    "channel_mults": "width multiple per level, e.g. 1,2",
    "num_res_blocks": "residual blocks per level",
    "attention_levels": "levels with self-attention, e.g. 1, or '' for none",
    "schedule": "noise schedule, " + " or ".join(SCHEDULES),
    "num_timesteps": "diffusion steps T",
    "p_uncond": "probability of the null label, for classifier-free guidance",
    "input_perturbation": "DDPM-IP gamma (0 = off; 0.1 in the paper)",
    "ema_decay": "EMA decay of the exported weights",
    "latent_channels": "channels C of the autoencoder's latent",
    "kl_weight": "weight of the autoencoder's KL term",
    "noise_power": "classifier timesteps drawn with density (t/T)^a toward the noisy end (0: uniform)",
    "pool": "how the classifier pools its last feature map: mean, or attention (guided-diffusion's)",
    "architecture": "the guide classifier's timm model name (without --model-args: timm's own arguments)",
    "model_args": "more keyword arguments of timm.create_model, as a JSON object",
    "input_size": "the side the guide classifier's timm network sees (images are resized to it)",
    "crop_padding": "guide classifier augmentation: random crops of the image padded by this many pixels",
    "label_smoothing": "label smoothing of the guide classifier's cross-entropy",
    "adversarial_radius": "adversarial training of the guide classifier: L2 radius of each image's move, "
                          "in [-1, 1] units (0: none)",
    "adversarial_steps": "steps of projected gradient ascent per adversarial move",
}


def _defaults(name: str) -> str:
    """'unet 0.0002, classifier 0.001, ...': the kinds that have the field, with their defaults."""
    return ", ".join(f"{kind} {'its network config' if f.default is None else f.default}"
                     for kind, cls in TASKS.items() for f in fields(cls) if f.name == name)


def _option_type(name: str) -> Callable[[str], object]:
    """What reads the field's value from the command line: its annotation without None, where a
    tuple is written '1,2,2' and a dict as a JSON object."""
    annotation = next(get_type_hints(cls)[name] for cls in TASKS.values() if name in _field_names(cls))
    kind = next(a for a in get_args(annotation) or (annotation,) if a is not type(None))
    return {tuple: _levels, dict: _json_object}.get(kind, kind)


def _field_names(cls: type[Task]) -> set[str]:
    return {f.name for f in fields(cls)}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m guidescope.train", description=__doc__.split("\n\n")[0])
    p.add_argument("kind", choices=[*TASKS, ALL], help=f"the network to train, or {ALL} three and the evaluation")
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    data.add_arguments(p)
    loop = p.add_argument_group("the loop")
    loop.add_argument("--steps", type=int, default=LoopConfig.steps,
                      help="optimizer steps per network (the time budget may stop sooner)")
    loop.add_argument("--minutes", type=float, default=None,
                      help="wall-time budget per network; stop and save when spent")
    loop.add_argument("--batch-size", type=int, default=LoopConfig.batch_size,
                      help="global batch (all processes together)")
    loop.add_argument("--seed", type=int, default=LoopConfig.seed)
    loop.add_argument("--save-every", type=int, default=LoopConfig.save_every)
    loop.add_argument("--log-every", type=int, default=LoopConfig.log_every)
    loop.add_argument("--autoencoder", metavar="FOLDER",
                      help="train the unet or classifier on the latents of FOLDER/autoencoder.safetensors "
                           "(latent diffusion; usually --out itself)")
    loop.add_argument("--init", metavar="FOLDER",
                      help="fine-tune: start from FOLDER/KIND.safetensors, tensor by tensor (those it lacks, such as a new "
                           "--pool's head, start fresh)")
    loop.add_argument("--train-only", metavar="PART",
                      help="with --init: train only this part of the network (e.g. head), keep the rest as loaded")
    loop.add_argument("--resume", action="store_true", help="continue from OUT/train-KIND/state.safetensors")
    cli.add_device_arguments(loop)
    loop.add_argument("--amp", action="store_true", help="bf16 autocast (fast on GPUs, slow on CPUs)")
    loop.add_argument("--channels-last", action="store_true", help="NHWC memory layout (GPUs)")
    loop.add_argument("--compile", action="store_true", help="torch.compile the network (GPUs; compiling takes a while)")
    network = p.add_argument_group("the networks")
    for name, help_text in NETWORK_OPTIONS.items():
        network.add_argument("--" + name.replace("_", "-"), type=_option_type(name), default=None,
                             help=f"{help_text} (default: {_defaults(name)})")
    return p


class CommandLine(NamedTuple):
    """A checked command line."""
    args: argparse.Namespace
    plan: list[tuple[Task, LoopConfig]]   # the networks to train, in order
    source: data.DataSource


def read_command_line(argv: list[str] | None = None) -> CommandLine:
    """Parse and check argv (None: sys.argv[1:]); exits with a usage error (status 2) that names
    what is wrong."""
    parser = _parser()
    args = parser.parse_args(argv)
    command = "python -m guidescope.train " + shlex.join(sys.argv[1:] if argv is None else argv)
    kinds = list(SEED_OFFSETS) if args.kind == ALL else [args.kind]
    try:
        _check_applies(args)
        plan = [(make_task(kind, args), loop_config(kind, args, command)) for kind in kinds]
        return CommandLine(args, plan, data.source_from_args(args))
    except ValueError as err:
        parser.error(str(err))


def _check_applies(args: argparse.Namespace) -> None:
    """Raises ValueError for a network option the kind has no field for, or --autoencoder where it does not apply."""
    if args.kind != ALL:
        unused = [f"--{n.replace('_', '-')}" for n in NETWORK_OPTIONS if getattr(args, n) is not None
                  and n not in _field_names(TASKS[args.kind])]
        if unused:
            raise ValueError(f"{', '.join(unused)} do not apply to the {args.kind}")
    if args.autoencoder and args.kind not in ("unet", "classifier"):
        raise ValueError(f"--autoencoder is for the unet and the classifier, not {args.kind}")


def make_task(kind: str, args: argparse.Namespace) -> Task:
    """The kind's Task with the network options given on the command line (the rest at its defaults)."""
    cls = TASKS[kind]
    return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if getattr(args, f.name, None) is not None})


def loop_config(kind: str, args: argparse.Namespace, command: str) -> LoopConfig:
    seed = args.seed + (SEED_OFFSETS[kind] if args.kind == ALL else 0)
    return LoopConfig(args.out, args.steps, args.minutes, args.batch_size, seed, args.save_every, args.log_every,
                      args.resume, args.amp, args.channels_last, args.compile, command, args.init,
                      args.train_only)


def evaluation_args(args: argparse.Namespace, device: torch.device) -> list[str]:
    """The evaluation's command line for OUT at the smoke budget. It names no data option, so the
    evaluation rebuilds the data from the checkpoints' "data" record: exactly the held-out images."""
    argv = ["--checkpoints", args.out, "--out", str(Path(args.out) / "evaluation"), "--budget", "smoke",
            "--device", str(device)]
    return argv + (["--threads", str(args.threads)] if args.threads else [])


def _latents(folder: str, train: data.Dataset, test: data.Dataset, device) -> tuple[data.Dataset, data.Dataset]:
    from ..checkpoints import load
    from .latents import encode_splits

    autoencoder, _ = load(folder, "autoencoder", device)
    return encode_splits(autoencoder, Path(folder) / "autoencoder.safetensors",
                         train._replace(images=train.images.to(device)), test._replace(images=test.images.to(device)))


def main(argv: list[str] | None = None) -> int:
    args, plan, source = read_command_line(argv)
    context = distributed.setup(args.device)
    configure(context.device, args.threads)
    try:
        code = train_all(plan, source, args.autoencoder, context)
    finally:
        distributed.teardown()
    if code == 0 and args.kind == ALL and context.is_main:
        from ..evaluation import command as evaluate  # only now: it loads the plotting libraries

        return evaluate.main(evaluation_args(args, context.device))
    return code


def train_all(plan: list[tuple[Task, LoopConfig]], source: data.DataSource, autoencoder: str | None,
              context: Context) -> int:
    """Train plan's networks in turn on source's data (or the latents of autoencoder's encoder);
    the exit status: 2 for missing or malformed data and a network that does not fit the images."""
    try:
        train, test = data.load(source)
        if autoencoder:
            train, test = _latents(autoencoder, train, test, context.device)
        for task, loop in plan:
            try:
                trainer = Trainer(task, loop, train, test, context)
            except ValueError as err:  # a network that does not fit the images, a batch that does not split
                print(f"error: {task.name}: {err}", file=sys.stderr)
                return 2
            trainer.run()
        context.barrier()
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


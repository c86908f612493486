"""Command-line options and launching: threads, device, checkpoints and their defaults, queue, server."""
from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from dataclasses import replace
from typing import TYPE_CHECKING

import torch

from guidescope.bundle import Bundle, load_bundle
from guidescope.checkpoints import CheckpointError
from guidescope.cli import configure
from guidescope.evaluation.defaults import FIDELITY_GOAL, FIDELITY_MARGIN
from guidescope.networks.backend import BACKENDS, BackendError

from .arguments import check_defaults
from .models import Model, models_of
from .settings import DISPLAY, LIMITS, SERVER, SHIPPED_CHECKPOINTS, SHIPPED_LATENT, Display, defaults_record

if TYPE_CHECKING:
    from .handlers import Handlers

DEFAULT_CHECKPOINTS = ("checkpoints/fashion-mnist", "checkpoints/fashion-mnist-latent")
REBUILD_DOC = "checkpoints/fashion-mnist/README.md"  # the commands that trained the shipped checkpoints
FIDELITY_FLOOR = FIDELITY_GOAL - FIDELITY_MARGIN  # a default reaches the target when its interval starts here


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python app.py", description="The classifier guidance demo (Gradio).")
    p.add_argument("--checkpoints", action="append", default=None, metavar="DIR",
                   help="folder with unet and classifier checkpoints (and an autoencoder, for a latent bundle), "
                        "and optionally the page's defaults in defaults.json; give it again to offer several "
                        f"models (default: {' and '.join(DEFAULT_CHECKPOINTS)}, the shipped pixel and latent ones)")
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", SERVER.host),
                   help=f"address to bind (default {SERVER.host}, or $GRADIO_SERVER_NAME as on Spaces)")
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", SERVER.port)),
                   help=f"port (default {SERVER.port}, or $GRADIO_SERVER_PORT)")
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="what runs the UNet forward pass (default auto: the CPU runtime when it loads, else torch)")
    p.add_argument("--threads", type=int, default=SERVER.threads,
                   help="torch CPU threads (default: CPU count / concurrent runs)")
    p.add_argument("--concurrency", type=int, default=SERVER.concurrency_limit,
                   help=f"sampling runs at once (default {SERVER.concurrency_limit})")
    p.add_argument("--frame-interval", type=float, default=DISPLAY.frame_interval_s, metavar="SECONDS",
                   help=f"at most one streamed frame per SECONDS from the start, and always the last "
                        f"(default {DISPLAY.frame_interval_s:g}; 0 sends x_T and every step)")
    p.add_argument("--live", choices=("auto", "on", "off"), default="auto",
                   help="offer live mode (images that follow the sliders): auto where one run at a model's "
                        f"defaults takes at most {DISPLAY.live_max_seconds:g} s on this machine (timed at start)")
    p.add_argument("--max-seconds", type=float, default=LIMITS.max_seconds, metavar="SECONDS",
                   help="the longest one request may hold the server (by the step cost timed at start; a run "
                        f"still going then ends), so others wait no longer (default {LIMITS.max_seconds:g})")
    args = p.parse_args(argv)
    if args.threads is not None and args.threads < 1 or args.concurrency < 1:
        p.error("--threads and --concurrency must be at least 1")
    if not args.frame_interval >= 0:  # also refuses NaN
        p.error(f"--frame-interval must be 0 or more seconds, got {args.frame_interval}")
    if not args.max_seconds > 0:
        p.error(f"--max-seconds must be more than 0 seconds, got {args.max_seconds}")
    return args


def display_of(args: argparse.Namespace) -> Display:
    """The display settings the options set: the frame interval, and the live limit of `--live on`
    (always offered) or `--live off` (never); `--live auto` keeps the limit, against which
    Timings.time_runs measures each model."""
    live = {} if args.live == "auto" else dict(live_max_seconds=math.inf if args.live == "on" else -1.0)
    return replace(DISPLAY, frame_interval_s=args.frame_interval, **live)


log = logging.getLogger(__name__)


class Refused(Exception):
    """The app cannot start; the message says why (launch prints it after "error: ", exit code 2)."""


def launch(args: argparse.Namespace) -> int:
    """Load the checkpoints and their defaults, build the page and serve it until interrupted. Returns
    an exit code."""
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    configure(device, args.threads or max(1, (os.cpu_count() or 1) // args.concurrency))
    folders = args.checkpoints or [str(SHIPPED_CHECKPOINTS)] + ([str(SHIPPED_LATENT)] if SHIPPED_LATENT.is_dir() else [])
    try:
        models = _checked(models_of(_bundles(folders, device, args.backend)))
    except Refused as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    _serve(_handlers(models, args, device), args)
    return 0


def _bundles(folders: list[str], device: str, backend: str) -> list[Bundle]:
    """The checkpoint bundle of each folder. Raises Refused, naming the folder and how to rebuild it."""
    bundles = []
    for folder in folders:
        try:
            bundles.append(load_bundle(folder, device, backend=backend))
        except CheckpointError as err:
            raise Refused(f"{err}\nthe app needs unet and classifier checkpoints (.safetensors and .json) in "
                          f"{folder}; {REBUILD_DOC} gives the commands that rebuild them") from None
        except BackendError as err:
            raise Refused(str(err)) from None
    return bundles


def _checked(models: list[Model]) -> list[Model]:
    """models, when the page's first Generate and Compare on each would run. Raises Refused."""
    for model in models:
        try:
            check_defaults(model.defaults, model.bundle.class_names, model.bundle.num_timesteps)
        except ValueError as err:
            raise Refused(f"{model.bundle.folder / 'defaults.json'} sets a default the app refuses: {err}") from None
    return models


def _handlers(models: list[Model], args: argparse.Namespace, device: str) -> Handlers:
    """The handlers of the models, the one the page opens on first, timed here as the page needs."""
    from .handlers import Handlers  # gradio loads only now, so a broken checkpoint stops the app in seconds

    models, opening = opening_order(models)
    handlers = Handlers(models, display=display_of(args), limits=replace(LIMITS, max_seconds=args.max_seconds))
    handlers.opening = opening
    if torch.device(device).type == "cpu":
        # what one step takes here: the page shows it (seconds for a full-size ImageNet model), and it
        # bounds what one request may ask for
        handlers.timings.time_steps(handlers.limits.max_images_per_row)
    if args.live == "auto":
        handlers.timings.time_runs()  # for live mode: what one run at each model's defaults takes on this machine
    return handlers


def _serve(handlers: Handlers, args: argparse.Namespace) -> None:
    """Build the page, queue its runs and serve it until interrupted, logging one line per run."""
    from . import ui

    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("demo").setLevel(logging.INFO)  # one line per run (demo.handlers)
    for model in handlers.models.values():  # what the start decided, per model
        live = handlers.timings.live(model.name)[1].replace("`", "")
        log.info("model %s: %s, UNet on %s (--backend %s) · %s", model.name, model.bundle.folder, model.bundle.backend,
                 args.backend, live)
    demo = ui.build(handlers, concurrency_limit=args.concurrency)
    demo.queue(max_size=SERVER.max_queue)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, css=ui.CSS, run_history=False,
                max_file_size=SERVER.max_file_size, show_error=False)


def _recorded(model) -> tuple[tuple[float, float, float] | None, float | None]:
    """(fidelity (value, low, high), seconds per image) that the evaluation wrote into defaults.json."""
    record = defaults_record(model.bundle.folder)
    try:
        fidelity, seconds = record.get("fidelity"), record.get("seconds_per_image")
        return (tuple(fidelity) if fidelity else None), (float(seconds) if seconds else None)
    except (ValueError, TypeError):
        return None, None


def opening_order(models: list) -> tuple[list, str]:
    """The models with the one the page opens on first, and a sentence saying why: of the models
    whose evaluated default reaches the fidelity target (interval from FIDELITY_FLOOR up), the
    one that sampled fastest per image; in the given order when none or one is offered."""
    if len(models) < 2:
        return models, ""
    recorded = {m.name: _recorded(m) for m in models}
    reaching = [m for m in models if recorded[m.name][0] and recorded[m.name][0][1] >= FIDELITY_FLOOR
                and recorded[m.name][1]]
    if not reaching:
        return models, (f"Opens on the first model given: no model's defaults.json records a default whose fidelity "
                        f"interval starts at {FIDELITY_FLOOR:.1%} or above.")
    first = min(reaching, key=lambda m: recorded[m.name][1])
    parts = [f"{m.name} {recorded[m.name][0][0]:.1%} [{recorded[m.name][0][1]:.1%}, {recorded[m.name][0][2]:.1%}] "
             f"at {1e3 * recorded[m.name][1]:.1f} ms per image" for m in reaching]
    return [first] + [m for m in models if m is not first], (
        f"Opens on **{first.name}**: of the models whose default reaches the fidelity target (the share of "
        f"samples the evaluator calls the requested class, with its 95% interval from "
        f"{FIDELITY_FLOOR:.1%}; {'; '.join(parts)}, as their evaluations measured), it samples fastest.")

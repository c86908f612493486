"""Command-line options and launching: threads, device, checkpoints and their defaults, queue, server."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import replace

import torch

from guidance.backend import BACKENDS, BackendError
from guidance.checkpoints import CheckpointError, load_bundle
from guidance.runtime import configure

from .arguments import check_defaults
from .settings import DISPLAY, SERVER, app_defaults

DEFAULT_CHECKPOINTS = "checkpoints/fashion-mnist"
REBUILD_DOC = "checkpoints/fashion-mnist/README.md"  # the commands that trained the shipped checkpoints


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python app.py", description="The classifier guidance demo (Gradio).")
    p.add_argument("--checkpoints", default=DEFAULT_CHECKPOINTS,
                   help=f"folder with unet and classifier checkpoints, and optionally the page's defaults in "
                        f"defaults.json (default {DEFAULT_CHECKPOINTS})")
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
                   help=f"at most one streamed frame per SECONDS, besides the first and the last "
                        f"(default {DISPLAY.frame_interval_s:g}; 0 sends every step)")
    args = p.parse_args(argv)
    if args.threads is not None and args.threads < 1 or args.concurrency < 1:
        p.error("--threads and --concurrency must be at least 1")
    if not args.frame_interval >= 0:  # also refuses NaN
        p.error(f"--frame-interval must be 0 or more seconds, got {args.frame_interval}")
    return args


def launch(args: argparse.Namespace) -> int:
    """Load the checkpoints and their defaults, build the page and serve it until interrupted. Returns
    an exit code."""
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    configure(device, args.threads or max(1, (os.cpu_count() or 1) // args.concurrency))
    try:
        bundle = load_bundle(args.checkpoints, device, backend=args.backend)
    except CheckpointError as err:
        print(f"error: {err}\nthe app needs unet and classifier checkpoints (.safetensors and .json) in "
              f"{args.checkpoints}; {REBUILD_DOC} gives the commands that rebuild them", file=sys.stderr)
        return 2
    except BackendError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    # gradio loads only now, so a broken checkpoint stops the app in seconds.
    from . import ui
    from .handlers import Handlers

    defaults = app_defaults(bundle.folder)
    try:
        check_defaults(defaults, bundle.class_names, bundle.num_timesteps)
    except ValueError as err:
        print(f"error: {bundle.folder / 'defaults.json'} sets a default the app refuses: {err}", file=sys.stderr)
        return 2
    handlers = Handlers(bundle, display=replace(DISPLAY, frame_interval_s=args.frame_interval), defaults=defaults)

    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("demo").setLevel(logging.INFO)  # one line per run (demo.handlers)
    demo = ui.build(handlers, concurrency_limit=args.concurrency)
    demo.queue(max_size=SERVER.max_queue)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, css=ui.CSS, run_history=False,
                max_file_size=SERVER.max_file_size, show_error=False)
    return 0

"""What the command lines (guidescope.train, guidescope.evaluate, guidescope.sample) share: the
device options, the check that counts are positive, and the process-wide torch settings. The
library modules take no argparse; these do."""
from __future__ import annotations

import argparse

import torch


def add_device_arguments(parser) -> None:
    """--device (default cuda where available, else cpu) and --threads (torch CPU threads, default
    torch's own), on an argparse parser or argument group."""
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def require_positive(parser: argparse.ArgumentParser, args: argparse.Namespace, *names: str) -> None:
    """A usage error (exit status 2) for the first option of `names` (destinations, such as
    "batch_size") that was given a value below 1; None, an option left unset, passes."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be positive")


def configure(device: str, threads: int | None = None) -> None:
    """Set the CPU thread count (when given) and, on CUDA, TF32 matrix products and cuDNN autotuning:
    the small convolutions here run several times faster that way, well within sampling noise."""
    if threads:
        torch.set_num_threads(threads)
    if str(device).startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True

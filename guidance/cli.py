"""What the command lines (guidance.train, guidance.evaluate, guidance.sample) share: the device
options and the check that counts are positive. The library modules take no argparse; these do."""
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

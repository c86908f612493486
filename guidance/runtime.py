"""Process-wide torch settings shared by the command lines."""
from __future__ import annotations

import torch


def configure(device: str, threads: int | None = None) -> None:
    """Set the CPU thread count (when given) and, on CUDA, TF32 matrix products and cuDNN autotuning:
    the small convolutions here run several times faster that way, well within sampling noise."""
    if threads:
        torch.set_num_threads(threads)
    if str(device).startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True

"""Turning model-range tensors into pictures: uint8 arrays, grids, nearest-neighbour upscaling."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) float in [-1, 1] -> uint8 (B, C, H, W) in [0, 255] (round to nearest)."""
    return ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()


def grid(images: torch.Tensor | np.ndarray, ncols: int | None = None, pad: int = 2, upscale: int = 1,
         background: int = 255) -> Image.Image:
    """Tile (B, C, H, W) images (float in [-1, 1] or uint8) into one PIL image, ncols per row,
    upscaled by an integer factor with nearest-neighbour so pixels stay crisp."""
    array = to_uint8(images) if isinstance(images, torch.Tensor) else np.asarray(images, dtype=np.uint8)
    b, c, h, w = array.shape
    ncols = ncols or int(np.ceil(np.sqrt(b)))
    nrows = int(np.ceil(b / ncols))
    canvas = np.full((c, nrows * (h + pad) + pad, ncols * (w + pad) + pad), background, dtype=np.uint8)
    for k in range(b):
        r, q = divmod(k, ncols)
        canvas[:, pad + r * (h + pad):pad + r * (h + pad) + h, pad + q * (w + pad):pad + q * (w + pad) + w] = array[k]
    image = Image.fromarray(canvas[0] if c == 1 else canvas.transpose(1, 2, 0))
    if upscale > 1:
        image = image.resize((image.width * upscale, image.height * upscale), Image.NEAREST)
    return image

"""Between pictures and model-range tensors: uint8 arrays, [-1, 1] floats, grids, nearest-neighbour
upscaling."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.utils import make_grid


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) float in [-1, 1] -> uint8 (B, C, H, W) in [0, 255] (round to nearest)."""
    return ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()


def to_model_range(images_uint8: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W) or (N, C, H, W) in [0, 255] -> float32 (N, C, H, W) in [-1, 1]."""
    if isinstance(images_uint8, torch.Tensor):
        x = images_uint8.float()
    else:  # np.array copies: idx data is a read-only buffer, which torch will not wrap
        x = torch.from_numpy(np.array(images_uint8)).float()
    if x.ndim == 3:
        x = x[:, None]
    return x / 127.5 - 1


def grid(images: torch.Tensor | np.ndarray, ncols: int | None = None, pad: int = 2, upscale: int = 1,
         background: int = 255) -> Image.Image:
    """Tile (B, C, H, W) images (float in [-1, 1] or uint8) into one PIL image, ncols per row (at
    most B; default ceil(sqrt(B))) with pad pixels of background around every tile (torchvision's
    make_grid), upscaled by an integer factor with nearest-neighbour so pixels stay crisp."""
    array = to_uint8(images) if isinstance(images, torch.Tensor) else np.asarray(images, dtype=np.uint8)
    tiles = torch.from_numpy(np.ascontiguousarray(array))
    c = tiles.shape[1]
    if len(tiles) == 1:  # make_grid hands a lone image back unpadded
        canvas = F.pad(tiles[0], (pad,) * 4, value=background)
    else:  # make_grid repeats one channel three times
        canvas = make_grid(tiles, nrow=ncols or int(np.ceil(np.sqrt(len(tiles)))), padding=pad,
                           pad_value=background)[:c]
    canvas = canvas.numpy()
    image = Image.fromarray(canvas[0] if c == 1 else canvas.transpose(1, 2, 0))
    if upscale > 1:
        image = image.resize((image.width * upscale, image.height * upscale), Image.NEAREST)
    return image

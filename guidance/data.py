"""Datasets as in-memory tensors: images (N, C, H, W) float32 in [-1, 1], labels (N,) int64.

Sources: Fashion-MNIST idx files (Debian's dataset-fashion-mnist by default, or any folder with
the same four files, or torchvision's download when asked), and any image folder with one
subfolder per class.
"""
from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

DEFAULT_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
INSTALL_HINT = ("install Debian's package with `apt-get install -y dataset-fashion-mnist`, "
                "pass --data-dir to a folder holding the four *-idx*-ubyte(.gz) files, "
                "or pass --download to fetch them with torchvision")


class DataError(RuntimeError):
    """Training data is missing or malformed."""


class Dataset(NamedTuple):
    images: torch.Tensor        # (N, C, H, W) float32 in [-1, 1]
    labels: torch.Tensor        # (N,) int64
    class_names: tuple[str, ...]


def _read_idx(path: Path) -> np.ndarray:
    """Parse an idx file (optionally gzipped): magic (0, 0, dtype 0x08, ndim), dims, uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:  # gzip raises EOFError on a cut-off stream
        raise DataError(f"{path} is unreadable or truncated: {err}") from None
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise DataError(f"{path} is not an idx file of unsigned bytes")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise DataError(f"{path} is truncated inside its header")
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{path} holds {body.size} values where its header promises {int(np.prod(dims))} "
                        "(truncated or corrupt)")
    return body.reshape(dims)


def _find(folder: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"Fashion-MNIST file {stem}(.gz) not found in {folder}; {INSTALL_HINT}")


def to_model_range(images_uint8: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W) or (N, C, H, W) in [0, 255] -> float32 (N, C, H, W) in [-1, 1]."""
    x = torch.as_tensor(np.array(images_uint8)).float()
    if x.ndim == 3:
        x = x[:, None]
    return x / 127.5 - 1


def load_fashion_mnist(split: str = "train", data_dir: str | Path | None = None,
                       download: bool = False) -> Dataset:
    """Fashion-MNIST `split` ('train' or 'test', 60000 / 10000 images of 28x28)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folder = Path(data_dir) if data_dir else DEFAULT_FASHION_DIR
    if download:
        import torchvision  # only needed for the download
        root = folder if data_dir else Path.home() / ".cache" / "fashion-mnist"
        torchvision.datasets.FashionMNIST(root, train=split == "train", download=True)
        folder = root / "FashionMNIST" / "raw"
    prefix = "train" if split == "train" else "t10k"
    images = _read_idx(_find(folder, f"{prefix}-images-idx3-ubyte"))
    labels = _read_idx(_find(folder, f"{prefix}-labels-idx1-ubyte"))
    if len(images) != len(labels):
        raise DataError(f"{folder}: {len(images)} images but {len(labels)} labels")
    return Dataset(to_model_range(images), torch.as_tensor(labels.astype(np.int64)), FASHION_CLASSES)


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


def load_image_folder(folder: str | Path, image_size: int = 28, channels: int = 1) -> Dataset:
    """Images under folder/<class name>/*.png (or jpg, ...), resized to image_size, as grey
    (channels=1) or RGB (channels=3). Classes are the subfolders in sorted order."""
    from PIL import Image

    folder = Path(folder)
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    if not classes:
        raise DataError(f"{folder} has no class subfolders; expected {folder}/<class>/<image>.png")
    images, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((folder / name).iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                try:
                    with Image.open(path) as im:
                        im = im.convert("L" if channels == 1 else "RGB").resize((image_size, image_size), Image.BICUBIC)
                        images.append(np.asarray(im))
                except OSError as err:  # PIL's UnidentifiedImageError and truncated files
                    raise DataError(f"unreadable image {path}: {err}") from None
                labels.append(label)
    if not images:
        raise DataError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {folder}")
    array = np.stack(images)
    if channels == 3:
        array = array.transpose(0, 3, 1, 2)
    return Dataset(to_model_range(array), torch.tensor(labels), tuple(classes))


def load_dataset(split: str = "train", data_dir: str | Path | None = None, image_folder: str | Path | None = None,
                 download: bool = False) -> Dataset:
    """An image folder when given (the same folder for both splits unless data_dir names the test
    folder), else Fashion-MNIST."""
    if image_folder:
        return load_image_folder(image_folder)
    return load_fashion_mnist(split, data_dir, download)

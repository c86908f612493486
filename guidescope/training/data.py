"""Datasets as in-memory tensors: images (N, C, H, W) float32 in [-1, 1], labels (N,) int64, and a
record of where they came from and how they were split.

Sources:
- Fashion-MNIST idx files (Debian's dataset-fashion-mnist by default, any folder with the same four
  files, or torchvision's download when asked), with its published 60000 / 10000 split.
- An image folder: FOLDER/<class>/<image>, split per class into training and held-out images by a
  seeded draw; or FOLDER/train/<class>/... and FOLDER/test/<class>/..., used as given. Images of
  any size and mode are cropped to a centred square and resized to one resolution, as grey or RGB.

Command lines describe a source with add_arguments(parser) and from_args(args); the "data" record
that training writes into each checkpoint's JSON rebuilds the same split with from_record(record).
"""
from __future__ import annotations

import gzip
import hashlib
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from ..images import to_model_range

DEFAULT_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
INSTALL_HINT = ("install Debian's package with `apt-get install -y dataset-fashion-mnist`, "
                "pass --data-dir to a folder holding the four *-idx*-ubyte(.gz) files, "
                "or pass --download to fetch them with torchvision")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
SOURCES = ("fashion-mnist", "image-folder")
FOLDER_IMAGE_SIZE = 32  # image folders: the smallest common size that the UNet's (1, 2, 2) levels halve twice


class DataError(RuntimeError):
    """Training data is missing or malformed."""


@dataclass(frozen=True)
class DataSource:
    """Which images to load and how; None fields take the source's default."""
    source: str = "fashion-mnist"   # one of SOURCES
    folder: str | None = None       # the idx files' folder (None: Debian's) or the image folder
    image_size: int | None = None   # side in pixels; None: 28 for Fashion-MNIST, 32 for image folders
    channels: int | None = None     # 1 (grey) or 3 (RGB); None: 1 for Fashion-MNIST, and for a folder
                                    # 3 when any image has colour, else 1
    holdout: float = 0.1            # share of each class held out (image folders without train/ and test/)
    split_seed: int = 0             # which images are held out
    download: bool = False          # Fashion-MNIST only: fetch the files with torchvision

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ValueError(f"unknown data source {self.source!r}; choose one of {SOURCES}")
        if self.source == "image-folder" and not self.folder:
            raise ValueError("an image-folder source needs a folder")
        if self.image_size is not None and self.image_size < 4:
            raise ValueError(f"image size must be at least 4 pixels, got {self.image_size}")
        if self.channels not in (None, 1, 3):
            raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {self.channels}")
        if not 0 < self.holdout < 1:
            raise ValueError(f"holdout must be a fraction in (0, 1), got {self.holdout}")


@dataclass(frozen=True)
class DataRecord:
    """What was loaded: stored as "data" in each checkpoint's JSON so the evaluation can rebuild
    exactly the held-out images (from_record)."""
    source: str                     # one of SOURCES
    folder: str | None              # the folder read (absolute for image folders)
    image_size: int
    channels: int
    split: str                      # "published" (Fashion-MNIST), "folders" (train/, test/) or "holdout"
    holdout: float | None           # the held-out share (split "holdout" only)
    split_seed: int | None          # (split "holdout" only)
    counts: dict = field(default_factory=dict)        # {"train": N, "test": M}
    class_counts: dict = field(default_factory=dict)  # {"train": [per class], "test": [per class]}
    duplicates_dropped: int = 0     # images whose pixels repeat an earlier image, left out of both splits
    fingerprint: str | None = None  # sha256 of every kept file's split and path (image folders)

    def to_json(self) -> dict:
        return asdict(self)


class Dataset(NamedTuple):
    images: torch.Tensor            # (N, C, H, W) float32 in [-1, 1]
    labels: torch.Tensor            # (N,) int64
    class_names: tuple[str, ...]
    files: tuple[str, ...] = ()     # image folders: each image's path relative to the folder
    record: DataRecord | None = None  # the same record on both splits of one load
    latent: dict | None = None      # images are an autoencoder's scaled latents (guidescope.training.latents.encode_splits)


# -- command lines ----------------------------------------------------------------------------------

def add_arguments(parser) -> None:
    """Add the data-source options (an argparse parser or argument group) that from_args reads."""
    group = parser.add_argument_group("data (Fashion-MNIST unless --image-folder)")
    group.add_argument("--data-dir", help="folder with the Fashion-MNIST idx files (default: Debian's)")
    group.add_argument("--download", action="store_true", help="fetch Fashion-MNIST with torchvision")
    group.add_argument("--image-folder", help="a folder with one subfolder of images per class, or with "
                       "train/ and test/ subfolders that each hold one subfolder per class")
    group.add_argument("--image-size", type=int, default=None,
                       help=f"image side in pixels (default: 28 for Fashion-MNIST, {FOLDER_IMAGE_SIZE} for folders)")
    group.add_argument("--channels", type=int, choices=(1, 3), default=None,
                       help="1 grey or 3 RGB (default: 3 when any image of the folder has colour, else 1)")
    group.add_argument("--holdout", type=float, default=DataSource.holdout,
                       help="share of each class held out for testing, when the folder has no train/ and test/")
    group.add_argument("--split-seed", type=int, default=DataSource.split_seed, help="which images are held out")


def source_from_args(args) -> DataSource:
    """The DataSource the options of add_arguments describe. Raises ValueError on a bad combination."""
    if args.image_folder and (args.data_dir or args.download):
        raise ValueError("--data-dir and --download are for Fashion-MNIST; drop them with --image-folder")
    return DataSource("image-folder" if args.image_folder else "fashion-mnist",
                      args.image_folder or args.data_dir, args.image_size, args.channels,
                      args.holdout, args.split_seed, args.download)


def from_args(args) -> tuple[Dataset, Dataset]:
    """(train, test) for the options of add_arguments. Raises ValueError or DataError."""
    return load(source_from_args(args))


def from_record(record: dict | DataRecord, folder: str | Path | None = None) -> tuple[Dataset, Dataset]:
    """(train, test) exactly as a checkpoint's "data" record describes them; folder overrides the
    recorded one (data that moved). Raises DataError when the data no longer matches the record."""
    record = record if isinstance(record, DataRecord) else DataRecord(**record)
    source = DataSource(record.source, str(folder) if folder else record.folder, record.image_size,
                        record.channels, record.holdout or DataSource.holdout,
                        DataSource.split_seed if record.split_seed is None else record.split_seed)
    train, test = load(source)
    now = train.record
    if (now.split, now.counts, now.fingerprint) != (record.split, record.counts, record.fingerprint):
        raise DataError(f"{source.folder} no longer holds the data this checkpoint was trained on "
                        f"(split {record.split}, {record.counts} images then; {now.split}, {now.counts} now, "
                        "or different files), so its held-out images cannot be rebuilt")
    return train, test


def load(source: DataSource) -> tuple[Dataset, Dataset]:
    """(train, test) Datasets for source, both carrying the same DataRecord."""
    if source.source == "fashion-mnist":
        return _load_fashion_split(source)
    return _load_folder(source)


# -- Fashion-MNIST ----------------------------------------------------------------------------------

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


def _fashion_folder(data_dir: str | Path | None, download: bool) -> Path:
    folder = Path(data_dir) if data_dir else DEFAULT_FASHION_DIR
    if not download:
        return folder
    import torchvision  # only needed for the download
    root = folder if data_dir else Path.home() / ".cache" / "fashion-mnist"
    torchvision.datasets.FashionMNIST(root, download=True)  # fetches the four files of both splits
    return root / "FashionMNIST" / "raw"


def _fashion_arrays(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, 28, 28) and labels (N,) of one split from the idx files in folder."""
    prefix = "train" if split == "train" else "t10k"
    images = _read_idx(_find(folder, f"{prefix}-images-idx3-ubyte"))
    labels = _read_idx(_find(folder, f"{prefix}-labels-idx1-ubyte"))
    if len(images) != len(labels):
        raise DataError(f"{folder}: {len(images)} images but {len(labels)} labels")
    return images, labels.astype(np.int64)


def _load_fashion_split(source: DataSource) -> tuple[Dataset, Dataset]:
    """The published split, resized (through the image folders' path) when asked for another size
    or RGB."""
    from PIL import Image

    folder = _fashion_folder(source.folder, source.download)
    size, channels = source.image_size or 28, source.channels or 1
    splits = []
    for split in ("train", "test"):
        images, labels = _fashion_arrays(folder, split)
        if (size, channels) != (28, 1):
            images = np.stack([_to_channels(_square_rgb(Image.fromarray(a), size), channels) for a in images])
        splits.append(Dataset(to_model_range(images), torch.as_tensor(labels), FASHION_CLASSES))
    counts, class_counts = _counts(splits[0].labels, splits[1].labels, len(FASHION_CLASSES))
    record = DataRecord("fashion-mnist", str(folder), size, channels, "published", None, None, counts, class_counts)
    return tuple(s._replace(record=record) for s in splits)


def _counts(train_labels: torch.Tensor, test_labels: torch.Tensor, num_classes: int) -> tuple[dict, dict]:
    """({"train": N, "test": M}, {"train": [per class], "test": [per class]})."""
    per_class = {name: torch.bincount(labels, minlength=num_classes).tolist()
                 for name, labels in (("train", train_labels), ("test", test_labels))}
    return {name: sum(counts) for name, counts in per_class.items()}, per_class


# -- image folders --------------------------------------------------------------------------------

def _square_rgb(image, size: int) -> np.ndarray:
    """Any PIL image -> (size, size, 3) uint8: upright per its EXIF tag, transparency over white,
    16-bit and float grey scaled to 8 bits, the centred square cropped and resized (bicubic)."""
    from PIL import Image, ImageOps

    image.draft(None, (2 * size, 2 * size))  # JPEG: decode at a reduced scale, much faster for photos
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        array = np.asarray(image, dtype=np.float64)
        array = array / 257 if array.max() > 255 else array  # 16-bit grey
        image = Image.fromarray(array.clip(0, 255).round().astype(np.uint8))
    if "A" in image.getbands() or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    image = ImageOps.fit(image.convert("RGB"), (size, size), Image.BICUBIC)
    return np.asarray(image)


def _to_channels(rgb: np.ndarray, channels: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (channels, H, W) uint8; grey is PIL's ITU-R 601-2 luma."""
    if channels == 3:
        return rgb.transpose(2, 0, 1)
    from PIL import Image
    return np.asarray(Image.fromarray(rgb).convert("L"))[None]


def _class_names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(class_folder: Path, root: Path) -> list[str]:
    """Paths (relative to root, '/'-separated) of the images directly in class_folder, sorted."""
    files = [p.relative_to(root).as_posix() for p in sorted(class_folder.iterdir())
             if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")]
    if not files:
        raise DataError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in class folder {class_folder}")
    return files


def _listing(root: Path) -> tuple[list[str], list[tuple[str, str, int]], str]:
    """(class names, [(split or '', relative path, label)], layout 'folders' or 'holdout')."""
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")
    top = _class_names(root)
    has = {name: name in top for name in ("train", "test")}
    if has["train"] != has["test"]:
        present, missing = ("train", "test") if has["train"] else ("test", "train")
        raise DataError(f"{root} has {present}/ but no {missing}/; give both (each with one subfolder per "
                        f"class) or put the class subfolders directly in {root}")
    layout = "folders" if has["train"] else "holdout"
    parts = ("train", "test") if layout == "folders" else ("",)
    per_part = {part: _class_names(root / part) for part in parts}
    classes = per_part[parts[0]]
    if len(classes) < 2:
        found = f"one class subfolder ({classes[0]})" if classes else "no class subfolders"
        raise DataError(f"{root / parts[0]} has {found}; expected at least two, as "
                        f"{root / parts[0]}/<class>/<image>.png")
    if layout == "folders" and per_part["test"] != classes:
        raise DataError(f"{root}/train and {root}/test hold different classes: only in train: "
                        f"{sorted(set(classes) - set(per_part['test']))}, only in test: "
                        f"{sorted(set(per_part['test']) - set(classes))}")
    entries = [(part, rel, label) for part in parts for label, name in enumerate(classes)
               for rel in _image_files(root / part / name, root)]
    return classes, entries, layout


def _read(root: Path, rel: str, size: int) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(root / rel) as image:
            return _square_rgb(image, size)
    except (OSError, ValueError, SyntaxError) as err:  # PIL: unidentified, truncated or unconvertible
        raise DataError(f"unreadable image {root / rel}: {err}") from None


def _held_out(files: list[str], labels: list[int], holdout: float, seed: int) -> list[bool]:
    """Per class, round(holdout * n) images (at least 1, and 1 fewer than n) are held out: those
    whose sha256(seed, path) ranks lowest. Hash ranks, unlike a library's random stream, give the
    same split on every machine and library version."""
    test = [False] * len(files)
    for label in sorted(set(labels)):
        members = [i for i, y in enumerate(labels) if y == label]
        n_test = min(len(members) - 1, max(1, round(holdout * len(members))))
        rank = sorted(members, key=lambda i: hashlib.sha256(f"{seed}/{files[i]}".encode()).hexdigest())
        for i in rank[:n_test]:
            test[i] = True
    return test


def _first_copies(pixels: list[np.ndarray]) -> list[int]:
    """Indices of the images whose pixels no earlier image has. Repeats are left out of both splits,
    so no training image can reappear among the held-out ones (train/ is read before test/)."""
    seen, keep = set(), []
    for i, array in enumerate(pixels):
        digest = hashlib.sha256(array.tobytes()).digest()
        if digest not in seen:
            seen.add(digest)
            keep.append(i)
    return keep


def _load_folder(source: DataSource) -> tuple[Dataset, Dataset]:
    root = Path(source.folder).resolve()
    size = source.image_size or FOLDER_IMAGE_SIZE
    classes, entries, layout = _listing(root)
    rgb = [_read(root, rel, size) for _, rel, _ in entries]
    channels = source.channels or (3 if any(_has_colour(a) for a in rgb) else 1)
    pixels = [_to_channels(a, channels) for a in rgb]
    keep = _first_copies(pixels)
    files = [entries[i][1] for i in keep]
    labels = [entries[i][2] for i in keep]
    if layout == "folders":
        test = [entries[i][0] == "test" for i in keep]
    else:
        test = _held_out(files, labels, source.holdout, source.split_seed)
    if not any(test):
        why = ("every test/ image repeats a training image" if layout == "folders"
               else "every class needs at least two distinct images to hold one out")
        raise DataError(f"{root}: no held-out images ({why})")
    array = np.stack([pixels[i] for i in keep])
    label_tensor = torch.tensor(labels, dtype=torch.int64)
    mask = torch.tensor(test)
    order = {"train": [f for f, t in zip(files, test) if not t], "test": [f for f, t in zip(files, test) if t]}
    fingerprint = hashlib.sha256("".join(f"{split}\t{f}\n" for split in ("train", "test")
                                         for f in order[split]).encode()).hexdigest()
    counts, class_counts = _counts(label_tensor[~mask], label_tensor[mask], len(classes))
    record = DataRecord("image-folder", str(root), size, channels, layout,
                        source.holdout if layout == "holdout" else None,
                        source.split_seed if layout == "holdout" else None,
                        counts, class_counts, len(entries) - len(keep), fingerprint)
    images = to_model_range(array)
    return tuple(Dataset(images[m], label_tensor[m], tuple(classes), tuple(order[split]), record)
                 for split, m in (("train", ~mask), ("test", mask)))


def _has_colour(rgb: np.ndarray) -> bool:
    return bool((rgb[..., 0] != rgb[..., 1]).any() or (rgb[..., 1] != rgb[..., 2]).any())

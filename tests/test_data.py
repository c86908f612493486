"""Data loading: Debian's Fashion-MNIST files, missing and damaged files, image folders."""
import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from guidance.data import (DEFAULT_FASHION_DIR, FASHION_CLASSES, DataError, load_dataset, load_fashion_mnist,
                           load_image_folder)

FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
needs_debian = pytest.mark.skipif(not (DEFAULT_FASHION_DIR / "t10k-labels-idx1-ubyte.gz").is_file(),
                                  reason="apt-get install dataset-fashion-mnist")


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_fashion(folder: Path, n_train: int = 12, n_test: int = 5, compress: bool = False) -> Path:
    """A miniature Fashion-MNIST in the real file format."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
              "train-labels-idx1-ubyte": np.arange(n_train) % 10,
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
              "t10k-labels-idx1-ubyte": np.arange(n_test) % 10}
    for name, array in arrays.items():
        data = idx_bytes(array)
        if compress:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return folder


@needs_debian
def test_debian_fashion_mnist():
    train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.images.dtype == torch.float32 and train.labels.dtype == torch.int64
    for split in (train, test):
        assert split.images.min() == -1 and split.images.max() == 1
        assert torch.equal(split.labels.unique(), torch.arange(10))
        assert split.class_names == FASHION_CLASSES
    assert torch.equal(torch.bincount(train.labels), torch.full((10,), 6000))
    assert FASHION_CLASSES[int(test.labels[0])] == "Ankle boot"  # the first test image, as published
    # uint8 -> [-1, 1] exactly: every value is k / 127.5 - 1.
    k = (test.images[:50] + 1) * 127.5
    torch.testing.assert_close(k, k.round(), rtol=0, atol=1e-4)


@pytest.mark.parametrize("compress", [False, True])
def test_a_folder_of_idx_files(tmp_path, compress):
    data = load_dataset("test", write_fashion(tmp_path, compress=compress))
    assert data.images.shape == (5, 1, 28, 28) and data.labels.tolist() == [0, 1, 2, 3, 4]


def test_missing_folder_gives_the_install_hint(tmp_path):
    with pytest.raises(DataError, match="apt-get install -y dataset-fashion-mnist"):
        load_fashion_mnist("train", tmp_path / "nowhere")


def test_unknown_split():
    with pytest.raises(ValueError, match="'train' or 'test'"):
        load_fashion_mnist("validation")


@pytest.mark.parametrize("keep", [2, 6, 9, 100, -1])
def test_truncated_idx_file(tmp_path, keep):
    folder = write_fashion(tmp_path)
    path = folder / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:keep])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte"):
        load_fashion_mnist("test", folder)


def test_truncated_gzip(tmp_path):
    folder = write_fashion(tmp_path, compress=True)
    path = folder / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz"):
        load_fashion_mnist("test", folder)


def test_images_and_labels_disagree(tmp_path):
    folder = write_fashion(tmp_path)
    (folder / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(4)))
    with pytest.raises(DataError, match="5 images but 4 labels"):
        load_fashion_mnist("test", folder)


def write_image_folder(root: Path) -> Path:
    for name, value, count in (("dark", 0, 3), ("bright", 255, 2)):
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(np.full((6, 6), value, np.uint8)).save(root / name / f"{i}.png")
    (root / "bright" / "notes.txt").write_text("not an image")
    return root


def test_image_folder(tmp_path):
    data = load_image_folder(write_image_folder(tmp_path), image_size=8)
    assert data.class_names == ("bright", "dark")  # sorted subfolders
    assert data.images.shape == (5, 1, 8, 8) and data.labels.tolist() == [0, 0, 1, 1, 1]
    assert bool((data.images[:2] == 1).all()) and bool((data.images[2:] == -1).all())
    rgb = load_image_folder(tmp_path, image_size=4, channels=3)
    assert rgb.images.shape == (5, 3, 4, 4)
    assert load_dataset(image_folder=tmp_path).images.shape == (5, 1, 28, 28)


def test_image_folder_failures(tmp_path):
    with pytest.raises(DataError, match="no class subfolders"):
        load_image_folder(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        load_image_folder(tmp_path)
    (tmp_path / "empty" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match="broken.png"):
        load_image_folder(tmp_path)

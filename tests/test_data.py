"""Data loading: Debian's Fashion-MNIST files, missing and damaged files; image folders of any
size and mode, their seeded stratified held-out split, train/ and test/ folders, the record that
rebuilds a split, and the command-line options."""
import argparse
import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from guidescope.training import data
from guidescope.training.data import DEFAULT_FASHION_DIR, FASHION_CLASSES, DataError, DataSource, load

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


def write_classes(root: Path, counts: dict[str, int], seed: int = 0, colour: bool = True) -> Path:
    """root/<class>/<i>.png: distinct random images of assorted sizes (7..15 x 5..12 pixels)."""
    rng = np.random.default_rng(seed)
    for name, count in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            shape = (int(rng.integers(7, 16)), int(rng.integers(5, 13))) + ((3,) if colour else ())
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def folder_source(root: Path, **overrides) -> DataSource:
    return DataSource("image-folder", str(root), **{"image_size": 8, **overrides})


def image_set(dataset) -> set[bytes]:
    return {image.numpy().tobytes() for image in dataset.images}


# -- Fashion-MNIST ----------------------------------------------------------------------------------

@needs_debian
def test_debian_fashion_mnist():
    train, test = load(DataSource())
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
    _, test = load(DataSource(folder=str(write_fashion(tmp_path, compress=compress))))
    assert test.images.shape == (5, 1, 28, 28) and test.labels.tolist() == [0, 1, 2, 3, 4]


def test_fashion_source_is_recorded_and_resizes(tmp_path):
    folder = write_fashion(tmp_path)
    train, test = load(DataSource(folder=str(folder)))
    assert train.record is test.record
    assert (train.record.split, train.record.counts) == ("published", {"train": 12, "test": 5})
    assert (train.record.image_size, train.record.channels, train.record.folder) == (28, 1, str(folder))
    written = np.frombuffer((folder / FILES[0]).read_bytes()[16:], np.uint8).reshape(12, 1, 28, 28)
    assert torch.equal(train.images, torch.from_numpy(written.astype(np.float32)) / 127.5 - 1)  # as stored
    rgb, _ = load(DataSource(folder=str(folder), image_size=32, channels=3))
    assert rgb.images.shape == (12, 3, 32, 32)
    assert torch.equal(rgb.images[:, 0], rgb.images[:, 2])  # grey images in three equal channels
    again, _ = data.from_record(json.loads(json.dumps(rgb.record.to_json())))
    assert torch.equal(again.images, rgb.images)


def test_missing_folder_gives_the_install_hint(tmp_path):
    with pytest.raises(DataError, match="apt-get install -y dataset-fashion-mnist"):
        load(DataSource(folder=str(tmp_path / "nowhere")))


@pytest.mark.parametrize("keep", [2, 6, 9, 100, -1])
def test_truncated_idx_file(tmp_path, keep):
    folder = write_fashion(tmp_path)
    path = folder / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:keep])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte"):
        load(DataSource(folder=str(folder)))


def test_truncated_gzip(tmp_path):
    folder = write_fashion(tmp_path, compress=True)
    path = folder / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz"):
        load(DataSource(folder=str(folder)))


def test_images_and_labels_disagree(tmp_path):
    folder = write_fashion(tmp_path)
    (folder / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(4)))
    with pytest.raises(DataError, match="5 images but 4 labels"):
        load(DataSource(folder=str(folder)))


# -- image folders: the held-out split --------------------------------------------------------------

def test_holdout_split_is_stratified_disjoint_and_recorded(tmp_path):
    root = write_classes(tmp_path / "f", {"cat": 10, "dog": 20, "eel": 5})
    train, test = load(folder_source(root, holdout=0.2, split_seed=3))
    assert train.class_names == test.class_names == ("cat", "dog", "eel")
    # round(0.2 n) per class, at least one
    assert torch.bincount(test.labels).tolist() == [2, 4, 1]
    assert torch.bincount(train.labels).tolist() == [8, 16, 4]
    assert not set(train.files) & set(test.files) and len(set(train.files) | set(test.files)) == 35
    assert not image_set(train) & image_set(test)
    for dataset in (train, test):  # each file's label is its folder
        assert [f.split("/")[0] for f in dataset.files] == [dataset.class_names[y] for y in dataset.labels]
    record = train.record
    assert record is test.record
    assert (record.source, record.folder, record.split) == ("image-folder", str(root.resolve()), "holdout")
    assert (record.image_size, record.channels, record.holdout, record.split_seed) == (8, 3, 0.2, 3)
    assert record.counts == {"train": 28, "test": 7}
    assert record.class_counts == {"train": [8, 16, 4], "test": [2, 4, 1]}


def test_holdout_split_is_seeded(tmp_path):
    root = write_classes(tmp_path / "f", {"a": 12, "b": 12})
    first, again, other = (load(folder_source(root, split_seed=s))[1].files for s in (0, 0, 1))
    assert first == again and first != other
    assert torch.equal(load(folder_source(root))[1].images, load(folder_source(root))[1].images)


def test_the_record_rebuilds_the_split(tmp_path):
    root = write_classes(tmp_path / "f", {"a": 6, "b": 7, "c": 8})
    train, test = load(folder_source(root, holdout=0.3, split_seed=5))
    record = json.loads(json.dumps(train.record.to_json()))  # as stored in a checkpoint's JSON
    again_train, again_test = data.from_record(record)
    assert again_train.files == train.files and again_test.files == test.files
    assert torch.equal(again_test.images, test.images) and torch.equal(again_test.labels, test.labels)
    moved = shutil.copytree(root, tmp_path / "moved")
    assert data.from_record(record, folder=moved)[1].files == test.files
    (root / "c" / "0.png").rename(root / "c" / "renamed.png")  # the same counts, other files
    with pytest.raises(DataError, match="no longer holds the data"):
        data.from_record(record)


def test_duplicates_never_straddle_the_split(tmp_path):
    root = write_classes(tmp_path / "f", {"a": 6, "b": 6})
    for i in range(6):  # every image of b repeated under another name: 12 distinct images of 18 files
        shutil.copy(root / "b" / f"{i}.png", root / "b" / f"copy-{i}.png")
    train, test = load(folder_source(root, holdout=0.5))
    assert train.record.duplicates_dropped == 6 and train.record.counts == {"train": 6, "test": 6}
    assert not image_set(train) & image_set(test)


def test_train_and_test_subfolders_are_the_split(tmp_path):
    write_classes(tmp_path / "f" / "train", {"a": 4, "b": 3})
    write_classes(tmp_path / "f" / "test", {"a": 2, "b": 2}, seed=1)
    shutil.copy(tmp_path / "f" / "train" / "a" / "0.png", tmp_path / "f" / "test" / "b" / "seen.png")
    train, test = load(folder_source(tmp_path / "f", holdout=0.5))
    assert train.class_names == ("a", "b")
    assert all(f.startswith("train/") for f in train.files) and all(f.startswith("test/") for f in test.files)
    assert torch.bincount(train.labels).tolist() == [4, 3] and torch.bincount(test.labels).tolist() == [2, 2]
    assert "test/b/seen.png" not in test.files  # a training image copied into test/ is not held out
    assert not image_set(train) & image_set(test)
    record = train.record
    assert (record.split, record.holdout, record.split_seed, record.duplicates_dropped) == ("folders", None, None, 1)
    assert data.from_record(record.to_json())[1].files == test.files


# -- image folders: sizes, modes and channels -------------------------------------------------------

def test_any_size_and_mode_loads_to_the_configured_shape(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "odd").mkdir()
    (tmp_path / "plain").mkdir()
    odd = {"grey.png": Image.fromarray(rng.integers(0, 256, (30, 11), dtype=np.uint8)),
           "rgba.png": Image.fromarray(rng.integers(0, 256, (9, 40, 4), dtype=np.uint8), "RGBA"),
           "palette.gif": Image.fromarray(rng.integers(0, 256, (13, 13, 3), dtype=np.uint8)).convert("P"),
           "bits.bmp": Image.fromarray(rng.integers(0, 2, (17, 5), dtype=np.uint8) * 255).convert("1"),
           "cmyk.jpg": Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).convert("CMYK"),
           "deep.png": Image.fromarray(rng.integers(0, 65536, (12, 12), dtype=np.uint16)),
           "grey-alpha.png": Image.fromarray(rng.integers(0, 256, (6, 8, 2), dtype=np.uint8), "LA")}
    for name, image in odd.items():
        image.save(tmp_path / "odd" / name)
    write_classes(tmp_path, {"plain": 3})
    for size, channels in ((8, 3), (12, 1), (5, 3)):
        train, test = load(DataSource("image-folder", str(tmp_path), size, channels, holdout=0.3))
        images = torch.cat([train.images, test.images])
        assert images.shape == (10, channels, size, size) and images.dtype == torch.float32
        assert images.min() >= -1 and images.max() <= 1
    (tmp_path / "odd" / "clear.png").unlink(missing_ok=True)
    Image.new("RGBA", (6, 6), (0, 0, 0, 0)).save(tmp_path / "odd" / "clear.png")
    train, test = load(DataSource("image-folder", str(tmp_path), 4, 3, holdout=0.1, split_seed=0))
    clear = dict(zip(train.files + test.files, torch.cat([train.images, test.images])))["odd/clear.png"]
    assert bool((clear == 1).all())  # transparency over white, not black


def test_channels_follow_the_folder_unless_given(tmp_path):
    grey = write_classes(tmp_path / "grey", {"a": 3, "b": 3}, colour=False)
    assert load(folder_source(grey))[0].images.shape[1] == 1
    assert load(folder_source(grey, channels=3))[0].images.shape[1] == 3
    colour = write_classes(tmp_path / "colour", {"a": 3, "b": 3})
    train, _ = load(folder_source(colour))
    assert train.images.shape[1] == 3 and train.record.channels == 3
    assert not torch.equal(train.images[:, 0], train.images[:, 1])  # colour kept
    assert load(folder_source(colour, channels=1))[0].images.shape[1] == 1


def test_default_folder_size(tmp_path):
    root = write_classes(tmp_path, {"a": 2, "b": 2})
    train, _ = load(DataSource("image-folder", str(root)))
    assert train.images.shape[-2:] == (data.FOLDER_IMAGE_SIZE, data.FOLDER_IMAGE_SIZE)


# -- the command line -------------------------------------------------------------------------------

def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    data.add_arguments(parser)
    return parser.parse_args(argv)


def test_arguments_describe_a_source(tmp_path):
    root = write_classes(tmp_path / "f", {"a": 5, "b": 5})
    args = parse("--image-folder", str(root), "--image-size", "12", "--channels", "1", "--holdout", "0.4",
                 "--split-seed", "7")
    train, test = data.from_args(args)
    assert train.images.shape[1:] == (1, 12, 12)
    assert (train.record.holdout, train.record.split_seed, train.record.counts) == (0.4, 7, {"train": 6, "test": 4})
    assert data.source_from_args(parse()) == DataSource()  # Fashion-MNIST from Debian's folder
    fashion = write_fashion(tmp_path / "fashion")
    assert data.from_args(parse("--data-dir", str(fashion)))[1].images.shape == (5, 1, 28, 28)


@pytest.mark.parametrize("argv, message", [
    (("--image-folder", "x", "--data-dir", "y"), "--data-dir and --download are for Fashion-MNIST"),
    (("--image-folder", "x", "--holdout", "0"), r"holdout must be a fraction in \(0, 1\)"),
    (("--image-folder", "x", "--holdout", "1"), r"holdout must be a fraction in \(0, 1\)"),
    (("--image-folder", "x", "--image-size", "2"), "image size must be at least 4"),
])
def test_bad_arguments(argv, message):
    with pytest.raises(ValueError, match=message):
        data.source_from_args(parse(*argv))


def test_bad_channels():
    with pytest.raises(ValueError, match=r"channels must be 1 \(grey\) or 3 \(RGB\)"):
        DataSource("image-folder", "x", channels=2)


# -- image folders: clear errors --------------------------------------------------------------------

def test_bad_folders_say_what_is_wrong(tmp_path):
    def error(root) -> str:
        with pytest.raises(DataError) as caught:
            load(folder_source(root))
        return str(caught.value)

    assert "does not exist" in error(tmp_path / "nowhere")
    Image.new("L", (4, 4)).save(tmp_path / "loose.png")
    assert "no class subfolders" in error(tmp_path) and "<class>/<image>.png" in error(tmp_path)
    write_classes(tmp_path, {"only": 2})
    assert "one class subfolder (only)" in error(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    message = error(tmp_path)
    assert "no images" in message and "empty" in message and ".png" in message
    (tmp_path / "empty" / "broken.png").write_bytes(b"\x89PNG not really")
    assert "unreadable image" in error(tmp_path) and "broken.png" in error(tmp_path)


def test_too_few_images_to_hold_any_out(tmp_path):
    root = write_classes(tmp_path, {"a": 1, "b": 1})
    with pytest.raises(DataError, match="no held-out images .*at least two distinct images"):
        load(folder_source(root))


def test_train_test_layout_errors(tmp_path):
    write_classes(tmp_path / "train", {"a": 2, "b": 2})
    with pytest.raises(DataError, match="has train/ but no test/"):
        load(folder_source(tmp_path))
    write_classes(tmp_path / "test", {"a": 2, "c": 2}, seed=1)
    with pytest.raises(DataError, match=r"different classes: only in train: \['b'\], only in test: \['c'\]"):
        load(folder_source(tmp_path))

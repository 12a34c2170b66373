"""train.data on real files from ../shared/data (MNIST, Fashion-MNIST, CIFAR-10 JPEG zip, Semeion)."""
from __future__ import annotations

import gzip
import logging
import os
import shutil
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from train.data import (
    FASHION_MNIST_CLASSES,
    DataError,
    Dataset,
    format_summary,
    kfold_indices,
    load_dataset,
    read_idx,
    stratified_sample,
    stratified_split,
    summarize,
    write_kaggle_csv,
    write_kaggle_submission,
)
from train.data.__main__ import EXIT_CODES, build_parser, main
from train.data.load import ACCEPTED_KINDS, FORMATS
from train.errors import ExitCode, InputError

REPO = Path(__file__).resolve().parents[1]
SAMPLE_NPZ = REPO / "examples" / "mnist_sample.npz"
# Published per-class counts (see shared/data/SOURCES.txt).
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
SEMEION_COUNTS = [161, 162, 159, 159, 161, 159, 161, 158, 155, 158]


@pytest.fixture(scope="module")
def mnist_train(mnist_dir) -> Dataset:
    return load_dataset(mnist_dir, split="train")


@pytest.fixture(scope="module")
def mnist_test(mnist_dir) -> Dataset:
    return load_dataset(mnist_dir, split="test")


@pytest.fixture()
def small_csv(tmp_path, mnist_test) -> Path:
    """A valid 6-row labelled Kaggle CSV of real MNIST test digits."""
    return write_kaggle_csv(mnist_test.subset(np.arange(6)), tmp_path / "train.csv")


def _edit_cell(path: Path, line_no: int, col: int, value: str) -> None:
    lines = path.read_text().split("\n")
    cells = lines[line_no - 1].split(",")
    cells[col] = value
    lines[line_no - 1] = ",".join(cells)
    path.write_text("\n".join(lines))


def _error(spec, **kw) -> str:
    with pytest.raises(DataError) as info:
        load_dataset(spec, **kw)
    return str(info.value)


# ------------------------------------------------------------------ IDX
def test_mnist_idx_train_and_test(mnist_train, mnist_test):
    assert len(mnist_train) == 60000 and mnist_train.image_shape == (28, 28, 1)
    assert mnist_train.x.dtype == np.uint8 and mnist_train.y.dtype == np.int64
    assert mnist_train.class_counts().tolist() == MNIST_TRAIN_COUNTS
    assert mnist_train.class_names == [str(i) for i in range(10)]
    assert len(mnist_test) == 10000
    assert mnist_test.class_counts().tolist() == MNIST_TEST_COUNTS
    assert mnist_train.x.max() == 255 and mnist_train.x.min() == 0
    assert mnist_train.x.flags.writeable


def test_fashion_idx(fashion_dir):
    train = load_dataset(fashion_dir)
    test = load_dataset(fashion_dir, split="test")
    assert (len(train), len(test)) == (60000, 10000)
    assert train.class_counts().tolist() == [6000] * 10
    assert test.class_counts().tolist() == [1000] * 10
    assert train.class_names == list(FASHION_MNIST_CLASSES)
    assert train.class_names[0] == "T-shirt/top" and train.class_names[9] == "Ankle boot"


def test_idx_uncompressed_and_single_file(tmp_path, mnist_dir, mnist_test):
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        with gzip.open(mnist_dir / f"{name}.gz") as src:
            (tmp_path / name).write_bytes(src.read())
    ds = load_dataset(tmp_path, split="test")
    np.testing.assert_array_equal(ds.x, mnist_test.x)
    np.testing.assert_array_equal(ds.y, mnist_test.y)
    one = load_dataset(tmp_path / "t10k-images-idx3-ubyte")
    assert len(one) == 10000
    assert "no IDX images file for split 'train'" in _error(tmp_path, split="train")
    assert read_idx(tmp_path / "t10k-labels-idx1-ubyte").shape == (10000,)


def test_idx_wrong_magic(tmp_path, mnist_dir):
    shutil.copy(mnist_dir / "t10k-labels-idx1-ubyte.gz", tmp_path)
    bad = tmp_path / "t10k-images-idx3-ubyte.gz"
    with gzip.open(bad, "wb") as f:
        f.write(b"\x12\x34\x08\x03" + struct.pack(">III", 1, 28, 28) + bytes(784))
    msg = _error(tmp_path, split="test")
    assert str(bad) in msg and "magic" in msg


def test_idx_count_mismatch_between_files(tmp_path, mnist_dir):
    shutil.copy(mnist_dir / "t10k-images-idx3-ubyte.gz", tmp_path)
    labels = read_idx(mnist_dir / "t10k-labels-idx1-ubyte.gz")[:9999]
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">II", 0x801, 9999) + labels.tobytes())
    msg = _error(tmp_path, split="test")
    assert "count mismatch" in msg and "10000 images" in msg and "9999 labels" in msg
    assert "t10k-labels-idx1-ubyte.gz" in msg


def test_idx_header_does_not_match_data(tmp_path, mnist_dir):
    with gzip.open(mnist_dir / "t10k-images-idx3-ubyte.gz") as f:
        data = f.read()
    bad = tmp_path / "t10k-images-idx3-ubyte"
    bad.write_bytes(data[:-100])
    with pytest.raises(DataError, match="count mismatch: the header says 10000x28x28") as info:
        read_idx(bad)
    assert str(bad) in str(info.value)


def test_idx_corrupt_gzip(tmp_path, mnist_dir):
    shutil.copy(mnist_dir / "t10k-labels-idx1-ubyte.gz", tmp_path)
    bad = tmp_path / "t10k-images-idx3-ubyte.gz"
    bad.write_bytes(b"this is not gzip data at all")
    msg = _error(tmp_path, split="test")
    assert str(bad) in msg and "gzip" in msg


# ------------------------------------------------------------------ Kaggle CSV
def test_kaggle_csv_round_trip_exact(tmp_path, mnist_train):
    part = mnist_train.subset(np.arange(1000, 1500))
    path = write_kaggle_csv(part, tmp_path / "train.csv")
    header = path.read_text().split("\n", 1)[0].split(",")
    assert header[0] == "label" and header[1] == "pixel0" and header[-1] == "pixel783"
    ds = load_dataset(path)
    np.testing.assert_array_equal(ds.x, part.x)
    np.testing.assert_array_equal(ds.y, part.y)
    assert ds.ids is None and ds.groups is None and ds.source == str(path)

    unl = load_dataset(write_kaggle_csv(part, tmp_path / "test.csv", with_label=False))
    assert unl.y is None and unl.ids.tolist() == list(range(1, 501))
    np.testing.assert_array_equal(unl.x, part.x)
    # A folder with train.csv / test.csv: split picks the file (the Kaggle download layout).
    assert load_dataset(tmp_path, split="test").y is None
    assert len(load_dataset(tmp_path, split="train")) == 500


def test_kaggle_csv_group_column(tmp_path, mnist_test):
    part = mnist_test.subset(np.arange(20))
    groups = np.array(["writer,a" if i % 2 else "writer b" for i in range(20)])
    part = Dataset(part.x, part.y, part.class_names, "mem", groups=groups)
    path = write_kaggle_csv(part, tmp_path / "g.csv")
    ds = load_dataset(path)
    assert ds.groups.tolist() == groups.tolist()
    np.testing.assert_array_equal(ds.x, part.x)
    assert summarize(ds)["groups"] == {"writer b": 10, "writer,a": 10}
    # Windows line endings and a UTF-8 byte-order mark (Excel's "CSV UTF-8") read the same.
    crlf = tmp_path / "crlf.csv"
    crlf.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b"\n", b"\r\n"))
    again = load_dataset(crlf)
    np.testing.assert_array_equal(again.x, part.x)
    assert again.groups.tolist() == groups.tolist()


@pytest.mark.slow
def test_42000_rows_split_37800_4200(tmp_path, mnist_train):
    first = mnist_train.subset(slice(0, 42000))
    rc = main(["kaggle-csv", "--from", str(Path(mnist_train.source).parent), "--rows", "42000",
               "--out", str(tmp_path / "train.csv")])
    assert rc == 0
    start = time.perf_counter()
    ds = load_dataset(tmp_path / "train.csv")
    elapsed = time.perf_counter() - start
    assert elapsed < 30, f"loading 42,000 rows took {elapsed:.1f} s"
    np.testing.assert_array_equal(ds.x, first.x)
    np.testing.assert_array_equal(ds.y, first.y)

    parts = stratified_split(ds, val_fraction=0.1, seed=42)
    assert set(parts) == {"train", "val"}
    assert (len(parts["train"]), len(parts["val"])) == (37800, 4200)
    total = ds.class_counts()
    val = parts["val"].class_counts()
    assert np.all(np.abs(val - 0.1 * total) <= 1)
    assert np.all(np.abs(parts["train"].class_counts() - 0.9 * total) <= 1)
    # Disjoint and complete: every row lands in exactly one part.
    rows = sorted(img.tobytes() for part in parts.values() for img in part.x)
    assert rows == sorted(img.tobytes() for img in first.x)
    again = stratified_split(ds, val_fraction=0.1, seed=42)
    np.testing.assert_array_equal(again["val"].x, parts["val"].x)


def test_csv_wrong_column_count_names_line(small_csv):
    lines = small_csv.read_text().split("\n")
    lines[3] = lines[3].rsplit(",", 1)[0]  # line 4 as the user sees it (header is line 1)
    small_csv.write_text("\n".join(lines))
    msg = _error(small_csv)
    assert str(small_csv) in msg and "line 4" in msg and "784 columns, expected 785" in msg


def test_csv_non_numeric_pixel_names_line_and_column(small_csv):
    _edit_cell(small_csv, 3, 6, "abc")  # column 6 = pixel5
    msg = _error(small_csv)
    assert str(small_csv) in msg and "line 3" in msg and "'pixel5'" in msg and "'abc'" in msg


@pytest.mark.parametrize("value", ["256", "-1"])
def test_csv_pixel_out_of_range(small_csv, value):
    _edit_cell(small_csv, 5, 101, value)  # pixel100
    msg = _error(small_csv)
    assert "line 5" in msg and "'pixel100'" in msg and "outside 0-255" in msg


def test_csv_non_integer_pixel(small_csv):
    _edit_cell(small_csv, 2, 1, "12.5")
    msg = _error(small_csv)
    assert "line 2" in msg and "'pixel0'" in msg and "whole number" in msg


def test_csv_integral_floats_are_accepted(small_csv):
    ref = load_dataset(small_csv)
    _edit_cell(small_csv, 2, 1, f"{int(ref.x[0].ravel()[0])}.0")
    np.testing.assert_array_equal(load_dataset(small_csv).x, ref.x)


def test_csv_label_outside_class_set(small_csv):
    _edit_cell(small_csv, 6, 0, "10")
    msg = _error(small_csv)
    assert str(small_csv) in msg and "line 6" in msg and "label 10" in msg and "0..9" in msg
    assert load_dataset(small_csv, num_classes=11).y.max() == 10
    assert load_dataset(small_csv, class_names=list("abcdefghijk")).class_names[10] == "k"


def test_csv_empty_header_only_blank_line_bad_header(tmp_path, small_csv):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert str(empty) in _error(empty) and "empty" in _error(empty)
    header_only = tmp_path / "header.csv"
    header_only.write_text(small_csv.read_text().split("\n", 1)[0] + "\n")
    assert "no data rows" in _error(header_only)
    lines = small_csv.read_text().split("\n")
    blank = tmp_path / "blank.csv"
    blank.write_text("\n".join(lines[:3] + [""] + lines[3:]))
    assert "line 4: empty line" in _error(blank)
    bad = tmp_path / "bad.csv"
    bad.write_text("label,pixel0,pixel1,pixel2,pixel3,colour\n1,0,0,0,0,red\n")
    msg = _error(bad)
    assert "line 1" in msg and "'colour'" in msg


# ------------------------------------------------------------------ npz
def test_npz_keras_layout_sample(mnist_train, mnist_test):
    train = load_dataset(SAMPLE_NPZ)
    test = load_dataset(SAMPLE_NPZ, split="test")
    assert (len(train), len(test)) == (3000, 1000)
    assert train.image_shape == (28, 28, 1) and train.class_names == [str(i) for i in range(10)]
    # Stratified: each class within one image of its MNIST share.
    share = np.array(MNIST_TRAIN_COUNTS) / 60000
    assert np.all(np.abs(train.class_counts() - 3000 * share) <= 1)
    assert SAMPLE_NPZ.stat().st_size < 2.5e6
    # Every sample is a real MNIST image with its real label.
    lookup = {img.tobytes(): lab for img, lab in zip(mnist_train.x, mnist_train.y)}
    assert all(lookup.get(img.tobytes()) == lab for img, lab in zip(train.x, train.y))
    lookup = {img.tobytes(): lab for img, lab in zip(mnist_test.x, mnist_test.y)}
    assert all(lookup.get(img.tobytes()) == lab for img, lab in zip(test.x, test.y))


def test_npz_xy_layout_class_names_and_errors(tmp_path, mnist_test):
    x, y = mnist_test.x[:50, ..., 0], mnist_test.y[:50]
    good = tmp_path / "xy.npz"
    np.savez(good, x=x, y=y.astype(np.int32), class_names=np.array(list("ABCDEFGHIJ")))
    ds = load_dataset(good)
    assert ds.image_shape == (28, 28, 1) and ds.class_names[0] == "A"
    np.testing.assert_array_equal(ds.x[..., 0], x)
    assert "no 'test' split" in _error(good, split="test")

    scaled = tmp_path / "scaled.npz"
    np.savez(scaled, x=x / 255.0, y=y)
    msg = _error(scaled)
    assert str(scaled) in msg and "[x]" in msg and "multiply by 255" in msg
    short = tmp_path / "short.npz"
    np.savez(short, x=x, y=y[:49])
    msg = _error(short)
    assert str(short) in msg and "[y]" in msg and "(50,)" in msg
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, images=x)
    assert "expected keys x_train" in _error(wrong)
    rgb = tmp_path / "rgb.npz"
    np.savez(rgb, x_train=np.repeat(x[..., None], 3, -1), y_train=y, x_test=x[:5], y_test=y[:5])
    assert load_dataset(rgb).image_shape == (28, 28, 3)


# ------------------------------------------------------------------ image folders and zips
def _write_digit_folder(root: Path, mnist: Dataset, per_class: int = 4, classes=(0, 1, 2), offset=0):
    """Real MNIST digits as PNG: the first of each class grey 28x28, then RGB and other sizes."""
    written = {}
    for c in classes:
        idx = np.flatnonzero(mnist.y == c)[offset: offset + per_class]
        (root / str(c)).mkdir(parents=True, exist_ok=True)
        for k, i in enumerate(idx):
            img = mnist.x[i, ..., 0]
            if k % 4 == 1:
                img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)  # RGB file, same pixels
            elif k % 4 == 2:
                img = cv2.resize(img, (56, 56), interpolation=cv2.INTER_NEAREST)  # bigger
            elif k % 4 == 3:
                img = cv2.resize(img, (40, 30), interpolation=cv2.INTER_LINEAR)  # other aspect
            assert cv2.imwrite(str(root / str(c) / f"{k:03d}.png"), img)
            written[(c, k)] = mnist.x[i, ..., 0]
    return written


def test_image_folder_grey_rgb_and_sizes(tmp_path, mnist_test):
    written = _write_digit_folder(tmp_path / "digits", mnist_test)
    ds = load_dataset(tmp_path / "digits")
    assert len(ds) == 12 and ds.class_names == ["0", "1", "2"]
    assert ds.image_shape == (28, 28, 1)  # size and colour of the first image
    assert ds.y.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert ds.ids[1] == "0/001.png"
    for c in range(3):
        np.testing.assert_array_equal(ds.x[4 * c, ..., 0], written[(c, 0)])  # lossless PNG
        np.testing.assert_array_equal(ds.x[4 * c + 1, ..., 0], written[(c, 1)])  # RGB -> grey exact
        np.testing.assert_array_equal(ds.x[4 * c + 2, ..., 0], written[(c, 2)])  # 2x nearest, INTER_AREA back
        diff = np.abs(ds.x[4 * c + 3, ..., 0].astype(int) - written[(c, 3)])
        assert diff.mean() < 20  # 40x30 -> 28x28 stretch: the same digit, roughly
    rgb = load_dataset(tmp_path / "digits", image_size=32, colour="rgb")
    assert rgb.image_shape == (32, 32, 3)
    assert np.array_equal(rgb.x[..., 0], rgb.x[..., 2])


def test_image_folder_with_splits_and_class_union(tmp_path, mnist_test):
    _write_digit_folder(tmp_path / "d" / "train", mnist_test, per_class=2)
    _write_digit_folder(tmp_path / "d" / "test", mnist_test, per_class=2, classes=(0, 2), offset=10)
    train = load_dataset(tmp_path / "d")
    test = load_dataset(tmp_path / "d", split="test")
    assert train.class_names == test.class_names == ["0", "1", "2"]
    assert test.y.tolist() == [0, 0, 2, 2]  # class 2 keeps index 2 although 1 is absent
    assert "no 'val' split folder" in _error(tmp_path / "d", split="val")
    ordered = load_dataset(tmp_path / "d", class_names=["2", "1", "0"])
    assert ordered.y.tolist() == [2, 2, 1, 1, 0, 0]


def test_image_folder_errors(tmp_path, mnist_test):
    root = tmp_path / "digits"
    _write_digit_folder(root, mnist_test, per_class=2)
    (root / "3").mkdir()
    msg = _error(root)
    assert str(root / "3") in msg and "holds no images" in msg
    (root / "3").rmdir()

    corrupt = root / "1" / "bad.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    msg = _error(root)
    assert str(corrupt) in msg and "not a readable image" in msg
    corrupt.unlink()

    loose = root / "stray.png"
    shutil.copy(root / "0" / "000.png", loose)
    assert str(loose) in _error(root)
    loose.unlink()

    assert "not inside a class folder" in _error(tmp_path / "digits" / "0")  # images, no class folders
    (tmp_path / "nothing").mkdir()
    assert "no images" in _error(tmp_path / "nothing")
    assert "no 'test' split" in _error(root, split="test")


def test_cifar_zip_real_test_split(shared_data):
    path = shared_data / "cifar10-jpeg" / "cifar10-jpeg.zip"
    ds = load_dataset(path, split="test")
    assert len(ds) == 10000 and ds.image_shape == (32, 32, 3)
    assert ds.class_names[:3] == ["airplane", "automobile", "bird"] and ds.num_classes == 10
    assert ds.class_counts().tolist() == [1000] * 10
    assert ds.ids[0] == "test/airplane/0000.jpg"
    mean = ds.x.reshape(-1, 3).mean(axis=0)  # README: train mean RGB (125.4, 123.1, 114.0)
    assert np.allclose(mean, [125.4, 123.1, 114.0], atol=3)
    assert mean[0] > mean[2]  # RGB order, not OpenCV's BGR


def test_small_zip_of_real_members_and_bad_member(tmp_path, shared_data):
    from PIL import Image

    src = zipfile.ZipFile(shared_data / "cifar10-jpeg" / "cifar10-jpeg.zip")
    picks = [f"cifar10-jpeg/{s}/{c}/{i:04d}.jpg" for s in ("train", "test") for c in ("cat", "dog", "ship")
             for i in range(3)]
    small = tmp_path / "small.zip"
    with zipfile.ZipFile(small, "w") as dst:
        for name in picks:
            dst.writestr(name, src.read(name))
    train = load_dataset(small)
    assert len(train) == 9 and train.class_names == ["cat", "dog", "ship"]
    assert train.y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    ref = np.asarray(Image.open(zipfile.ZipFile(small).open(picks[0])).convert("RGB"))
    assert np.abs(train.x[0].astype(int) - ref).mean() < 2  # same JPEG, two decoders
    grey = load_dataset(small, split="test", colour="grey", image_size=(28, 28))
    assert grey.image_shape == (28, 28, 1) and len(grey) == 9

    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as dst:
        dst.writestr("set/cat/0.jpg", src.read(picks[0]))
        dst.writestr("set/cat/1.jpg", b"not a jpeg")
    msg = _error(bad)
    assert f"{bad}:set/cat/1.jpg" in msg


# ------------------------------------------------------------------ Semeion
def test_semeion_mnist_like(shared_data):
    ds = load_dataset(shared_data / "semeion" / "semeion.data")
    assert len(ds) == 1593 and ds.image_shape == (28, 28, 1)
    assert ds.class_counts().tolist() == SEMEION_COUNTS
    assert ds.x.max() == 255 and ds.x.min() == 0
    img = ds.x[..., 0].astype(float)
    for digit in ds.x[..., 0]:  # the ink fits a 20x20 box, the longer side filling it
        rows, cols = np.flatnonzero(digit.any(axis=1)), np.flatnonzero(digit.any(axis=0))
        h, w = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
        assert max(h, w) == 20
    mass = img.sum(axis=(1, 2))
    cy = (img.sum(axis=2) @ np.arange(28)) / mass
    cx = (img.sum(axis=1) @ np.arange(28)) / mass
    assert np.all(np.abs(cy - 14) < 1) and np.all(np.abs(cx - 14) < 1)  # centre of mass, like MNIST


def test_semeion_bad_rows(tmp_path, shared_data):
    lines = (shared_data / "semeion" / "semeion.data").read_text().splitlines()[:5]
    bad = tmp_path / "semeion.data"
    cells = lines[2].split()
    cells[-1] = "1" if cells[-1] == "0" else "0"  # two hot labels (or none)
    bad.write_text("\n".join(lines[:2] + [" ".join(cells)] + lines[3:]) + "\n")
    msg = _error(bad)
    assert str(bad) in msg and "line 3" in msg and "exactly one 1" in msg
    bad.write_text("\n".join(lines[:3] + [" ".join(lines[3].split()[:-1])]) + "\n")
    assert "line 4: 265 values" in _error(bad)
    cells = lines[0].split()
    cells[17] = "x"
    bad.write_text(" ".join(cells) + "\n")
    assert "line 1, pixel 17 (row 1, column 1)" in _error(bad)


# ------------------------------------------------------------------ named sets, dispatch
def test_named_mnist_from_keras_cache_without_tensorflow(tmp_path):
    (tmp_path / "datasets").mkdir()
    shutil.copy(SAMPLE_NPZ, tmp_path / "datasets" / "mnist.npz")
    code = ("import sys; from train.data import load_dataset; ds = load_dataset('mnist', split='test'); "
            "assert len(ds) == 1000 and ds.source == 'mnist', ds; "
            "load_dataset(sys.argv[1]); "
            "assert 'tensorflow' not in sys.modules and 'sklearn' not in sys.modules")
    env = {**os.environ, "KERAS_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code, str(SAMPLE_NPZ)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_named_offline_message(tmp_path, monkeypatch):
    import tf_keras.src.datasets.fashion_mnist as kfashion
    import tf_keras.src.datasets.mnist as kmnist

    from train._tf import keras  # noqa: F401 - the real Keras download path, with the network cut

    calls = []

    def offline(fname, origin=None, **kw):
        calls.append(origin)
        raise Exception(f"URL fetch failure on {origin}: None -- [Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(kmnist, "get_file", offline)
    monkeypatch.setattr(kfashion, "get_file", offline)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    msg = _error("mnist")
    assert calls and "mnist.npz" in calls[0]
    assert str(tmp_path / "datasets" / "mnist.npz") in msg
    assert "--data path/to/mnist/" in msg and "train-images-idx3-ubyte.gz" in msg and ".npz" in msg
    assert "--data path/to/fashion_mnist/" in _error("fashion_mnist", split="test")


def test_unknown_specs_list_accepted_kinds(tmp_path):
    msg = _error("imagenet-tiny")
    assert "not a known dataset name" in msg and "Kaggle digit-recognizer CSV" in msg and "semeion" in msg
    assert "Did you mean 'mnist'" in _error("mnsit")
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    msg = _error(other)
    assert str(other) in msg and "Accepted:" in msg
    with pytest.raises(DataError, match="unknown split"):
        load_dataset(SAMPLE_NPZ, split="holdout")
    with pytest.raises(DataError, match="colour must be"):
        load_dataset(SAMPLE_NPZ, colour="cmyk")



def test_format_table_is_the_accepted_list_and_keeps_precedence(tmp_path, mnist_dir, mnist_test):
    assert ACCEPTED_KINDS == tuple(f.accepts for f in FORMATS.values())
    msg = _error("imagenet-tiny")
    assert all(f"({i}) {kind}" in msg for i, kind in enumerate(ACCEPTED_KINDS, 1))
    both = tmp_path / "both"  # IDX files beside a train.csv: the folder is an IDX folder
    both.mkdir()
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(mnist_dir / name, both)
    write_kaggle_csv(mnist_test.subset(np.arange(5)), both / "train.csv")
    assert len(load_dataset(both, split="test")) == 10000
    tree = tmp_path / "semeion-idx3-ubyte.zip"  # a .zip is a zip, whatever else its name says
    with zipfile.ZipFile(tree, "w") as zf:
        for i in range(4):
            zf.writestr(f"{mnist_test.y[i]}/{i}.png", cv2.imencode(".png", mnist_test.x[i])[1].tobytes())
    ds = load_dataset(tree)
    assert len(ds) == 4 and ds.image_shape == (28, 28, 1)
    np.testing.assert_array_equal(ds.x[ds.ids.tolist().index(f"{mnist_test.y[0]}/0.png")], mnist_test.x[0])


# ------------------------------------------------------------------ Dataset, summary, splits, writers
def test_dataset_validation_and_subset(mnist_test):
    sub = mnist_test.subset(np.arange(10))
    assert len(sub) == 10 and sub.num_classes == 10 and sub.image_shape == (28, 28, 1)
    assert len(mnist_test.subset(mnist_test.y == 3)) == 1010
    assert "n=10" in repr(sub)
    with pytest.raises(DataError, match="uint8"):
        Dataset(sub.x.astype(np.float32), sub.y, sub.class_names)
    with pytest.raises(DataError, match="outside the class set"):
        Dataset(sub.x, sub.y + 10, sub.class_names, "mem")
    with pytest.raises(DataError, match="groups must have shape"):
        Dataset(sub.x, sub.y, sub.class_names, groups=np.array(["a"]))


def test_summary_table(mnist_train, caplog):
    with caplog.at_level(logging.WARNING, logger="train.data"):
        s = summarize(mnist_train)
    assert not [r for r in caplog.records if "imbalance" in r.getMessage()]
    assert s["n"] == 60000 and s["image_shape"] == [28, 28, 1]
    assert [c["count"] for c in s["classes"]] == MNIST_TRAIN_COUNTS
    assert abs(sum(c["percent"] for c in s["classes"]) - 100) < 1e-9
    assert s["imbalance_ratio"] == pytest.approx(6742 / 5421)
    x = mnist_train.x.astype(np.float64)
    assert s["pixel_mean"] == pytest.approx(x.mean()) and s["pixel_std"] == pytest.approx(x.std())
    assert (s["pixel_min"], s["pixel_max"]) == (0, 255)
    text = format_summary(s)
    assert "Label" in text and "Count" in text and "Percent" in text
    assert "5,923" in text and "9.87%" in text and "60,000" in text and "1.24" in text


def test_summary_imbalance_warning(mnist_test, caplog):
    keep = np.concatenate([np.flatnonzero(mnist_test.y == 0)[:100], np.flatnonzero(mnist_test.y != 0)])
    skewed = mnist_test.subset(np.sort(keep))
    with caplog.at_level(logging.WARNING, logger="train.data"):
        s = summarize(skewed)
    assert s["imbalanced"] and s["imbalance_ratio"] == pytest.approx(1135 / 100)
    assert any("imbalance ratio 11.35" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="train.data"):
        assert summarize(mnist_test, imbalance_threshold=1.2)["imbalanced"]  # 1135/892 = 1.27
    assert caplog.records


def test_kfold_indices(mnist_test):
    ds = mnist_test.subset(np.arange(2000))
    folds = kfold_indices(ds, k=5, seed=1)
    assert len(folds) == 5
    val = np.concatenate([v for _, v in folds])
    assert sorted(val.tolist()) == list(range(2000))
    counts = ds.class_counts()
    for tr, va in folds:
        assert len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == 2000
        assert np.all(np.abs(np.bincount(ds.y[va], minlength=10) - counts / 5) <= 1)
    assert [v.tolist() for _, v in kfold_indices(ds, 5, seed=1)] == [v.tolist() for _, v in folds]


def test_stratified_split_with_test_part(mnist_test):
    parts = stratified_split(mnist_test, val_fraction=0.1, test_fraction=0.2, seed=0)
    assert {k: len(v) for k, v in parts.items()} == {"train": 7000, "val": 1000, "test": 2000}
    with pytest.raises(DataError, match="unlabelled"):
        stratified_split(Dataset(mnist_test.x[:10], None, mnist_test.class_names))


def test_stratified_sample(mnist_train):
    s = stratified_sample(mnist_train, 1000, seed=3)
    share = np.array(MNIST_TRAIN_COUNTS) / 60000
    assert len(s) == 1000 and np.all(np.abs(s.class_counts() - 1000 * share) <= 1)
    np.testing.assert_array_equal(stratified_sample(mnist_train, 1000, seed=3).x, s.x)
    assert not np.array_equal(stratified_sample(mnist_train, 1000, seed=4).x, s.x)
    with pytest.raises(ValueError):
        stratified_sample(mnist_train, 0)


def test_write_kaggle_submission(tmp_path):
    path = write_kaggle_submission(np.arange(1, 5), np.array([7, 2, 1, 0]), tmp_path / "sub" / "s.csv")
    assert path.read_text() == "ImageId,Label\n1,7\n2,2\n3,1\n4,0\n"
    scores = np.eye(10)[[3, 9]]
    assert write_kaggle_submission(None, scores, tmp_path / "p.csv").read_text() == "ImageId,Label\n1,3\n2,9\n"
    with pytest.raises(ValueError, match="3 ids but 2 predictions"):
        write_kaggle_submission([1, 2, 3], [0, 1], tmp_path / "x.csv")


def test_write_kaggle_csv_refuses_rgb(tmp_path):
    rgb = Dataset(np.zeros((2, 8, 8, 3), np.uint8), np.array([0, 1]), ["a", "b"], "mem")
    with pytest.raises(DataError, match="square grey"):
        write_kaggle_csv(rgb, tmp_path / "x.csv")


def test_cli_summary_and_kaggle_csv(tmp_path, mnist_dir, mnist_test, capsys):
    assert main(["summary", str(mnist_dir), "--split", "test"]) == 0
    out = capsys.readouterr().out
    assert "10,000" in out and "1,135" in out and "11.35%" in out
    out_csv = tmp_path / "test.csv"
    assert main(["kaggle-csv", "--from", str(mnist_dir), "--split", "test", "--rows", "50",
                 "--out", str(out_csv), "--unlabelled"]) == 0
    ds = load_dataset(out_csv)
    assert ds.y is None and ds.ids.tolist() == list(range(1, 51))
    np.testing.assert_array_equal(ds.x, mnist_test.x[:50])
    assert main(["summary", str(tmp_path / "missing.csv")]) == ExitCode.INPUT  # 5: the dataset is at fault
    assert "error: " in (err := capsys.readouterr().err) and "missing.csv" in err



def test_cli_bad_flags_exit_2_and_help_lists_the_codes(tmp_path, mnist_dir, capsys):
    assert issubclass(DataError, InputError) and issubclass(DataError, ValueError)
    assert DataError("x").exit_code == ExitCode.INPUT == 5
    for flags in (["--split", "holdout"], ["--image-size", "0"], ["--colour", "cmyk"]):
        with pytest.raises(SystemExit) as info:
            main(["summary", str(mnist_dir), *flags])
        assert info.value.code == ExitCode.USAGE, flags
    assert "unknown split 'holdout'" in capsys.readouterr().err
    assert main(["kaggle-csv", "--from", str(mnist_dir), "--split", "test", "--rows", "0",
                 "--out", str(tmp_path / "x.csv")]) == ExitCode.USAGE
    assert "--rows must be in 1..10000" in capsys.readouterr().err and not (tmp_path / "x.csv").exists()
    text = build_parser().format_help()
    assert "exit codes:" in text and all(f"  {int(c)}  " in text for c in EXIT_CODES)

def test_module_entry_point(shared_data):
    out = subprocess.run([sys.executable, "-m", "train.data", "summary",
                          str(shared_data / "semeion" / "semeion.data")],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "1,593" in out.stdout and "162" in out.stdout

"""Host-side data layer: load labelled image sets, describe them, split them, write Kaggle files.

One entry point, :func:`load_dataset`, reads every kind of source this SDK trains on and returns a
:class:`Dataset` of ``uint8`` images shaped ``(N, H, W, C)`` (RGB order when ``C == 3``):

- a Kaggle "digit-recognizer" CSV (``label,pixel0..pixel783`` or the unlabelled ``pixel0..``),
  or a folder holding ``train.csv`` / ``test.csv``;
- MNIST-style IDX files (``train-images-idx3-ubyte.gz`` ...), MNIST and Fashion-MNIST;
- a ``.npz`` in Keras' ``mnist.npz`` layout (``x_train, y_train, x_test, y_test``) or ``x, y``;
- a folder (or ``.zip``) with one sub-folder per class, optionally under ``train/`` and ``test/``;
- the UCI ``semeion.data`` file (16x16 binary digits, made MNIST-like at 28x28);
- a name: ``mnist``, ``fashion_mnist``, ``cifar10`` (the Keras cache; downloads when online).

Bad input raises :class:`DataError` naming the file and the line, column, key or path at fault;
nothing is dropped silently. Loading needs only numpy and OpenCV (Pillow as a decoding fallback);
the splitting helpers need scikit-learn, and only the named-dataset download needs TensorFlow.

CLI::

    python -m train.data summary SPEC [--split test]
    python -m train.data kaggle-csv --from path/to/mnist --rows 42000 --out train.csv [--unlabelled]
"""
from __future__ import annotations

import argparse
import codecs
import csv
import difflib
import gzip
import io
import json
import logging
import math
import os
import re
import struct
import sys
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import cv2
import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "DataError",
    "Dataset",
    "load_dataset",
    "read_idx",
    "summarize",
    "format_summary",
    "stratified_split",
    "kfold_indices",
    "stratified_sample",
    "write_kaggle_submission",
    "write_kaggle_csv",
    "MNIST_CLASSES",
    "FASHION_MNIST_CLASSES",
    "CIFAR10_CLASSES",
    "ACCEPTED_KINDS",
    "keras_cache_dir",
    "main",
]

MNIST_CLASSES: tuple[str, ...] = tuple(str(i) for i in range(10))
FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)

IMAGE_EXTENSIONS = frozenset({
    ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp",
    ".pgm", ".ppm", ".pbm", ".pnm", ".jp2",
})
# Split folder / key names as they appear in the wild, mapped to the canonical split.
_SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "test": "test", "testing": "test", "t10k": "test",
    "val": "val", "valid": "val", "validation": "val",
}
_IGNORED_NAMES = frozenset({"__MACOSX", "Thumbs.db", "desktop.ini"})

ACCEPTED_KINDS = (
    "a Kaggle digit-recognizer CSV (header label,pixel0..pixel783 or pixel0..pixel783; .csv or "
    ".csv.gz), or a folder holding train.csv / test.csv",
    "a folder of MNIST-style IDX files (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
    "t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]) or one ...-images-idx3-ubyte[.gz] file",
    "a .npz with x_train, y_train, x_test, y_test (Keras layout) or x, y",
    "an image folder with one sub-folder per class (optionally under train/ and test/), or a .zip of one",
    "the UCI semeion.data file",
    "a dataset name: mnist, fashion_mnist, cifar10 (Keras cache, downloaded when online)",
)


class DataError(ValueError):
    """Input data is missing, malformed or inconsistent. The message names the file and place."""


# --------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------
@dataclass(eq=False, repr=False)
class Dataset:
    """Images with optional labels, in memory.

    x: (N, H, W, C) uint8, 0-255, C = 1 (grey) or 3 (RGB order).
    y: (N,) int64 class indices into ``class_names``, or None for an unlabelled set.
    source: where it came from (path or name), for messages and reports.
    ids: optional per-sample identifiers (Kaggle ImageId 1..N, file paths of an image folder).
    groups: optional per-sample group attribute (string array), for per-group evaluation.
    """

    x: np.ndarray
    y: np.ndarray | None
    class_names: list[str]
    source: str = ""
    ids: np.ndarray | None = None
    groups: np.ndarray | None = None

    def __post_init__(self) -> None:
        where = self.source or "Dataset"
        x = self.x
        if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] not in (1, 3):
            desc = f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
            raise DataError(f"{where}: x must be a uint8 array shaped (N, H, W, 1 or 3); got {desc}")
        self.class_names = [str(c) for c in self.class_names]
        n = len(x)
        if self.y is not None:
            self.y = _labels_array(self.y, n, where, len(self.class_names), field="y")
        for name in ("ids", "groups"):
            value = getattr(self, name)
            if value is not None:
                value = np.asarray(value)
                if value.ndim != 1 or len(value) != n:
                    raise DataError(f"{where}: {name} must have shape ({n},); got {value.shape}")
                setattr(self, name, value)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __repr__(self) -> str:
        labels = "unlabelled" if self.y is None else f"{self.num_classes} classes"
        return (f"Dataset(n={len(self)}, image_shape={self.image_shape}, {labels}, "
                f"source={self.source!r})")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(d) for d in self.x.shape[1:])  # type: ignore[return-value]

    @property
    def labelled(self) -> bool:
        return self.y is not None

    def class_counts(self) -> np.ndarray:
        """Samples per class, (num_classes,) int64 (zeros included)."""
        if self.y is None:
            raise DataError(f"{self.source or 'Dataset'}: unlabelled, so it has no class counts")
        return np.bincount(self.y, minlength=self.num_classes).astype(np.int64)

    def subset(self, indices: Any) -> Dataset:
        """A new Dataset of the given rows (index array, boolean mask or slice)."""
        if not isinstance(indices, slice):
            indices = np.asarray(indices)
            if indices.dtype == bool:
                if indices.shape != (len(self),):
                    raise DataError(f"{self.source}: boolean mask of shape {indices.shape} "
                                    f"does not match {len(self)} samples")
            elif indices.size and not np.issubdtype(indices.dtype, np.integer):
                raise DataError(f"{self.source}: subset indices must be integers, got {indices.dtype}")
            elif indices.size == 0:
                indices = indices.astype(np.int64)
        return Dataset(
            x=self.x[indices],
            y=None if self.y is None else self.y[indices],
            class_names=list(self.class_names),
            source=self.source,
            ids=None if self.ids is None else self.ids[indices],
            groups=None if self.groups is None else self.groups[indices],
        )


# --------------------------------------------------------------------------------------------
# load_dataset: dispatch
# --------------------------------------------------------------------------------------------
def load_dataset(
    spec: str | os.PathLike | Dataset,
    split: str = "train",
    image_size: int | Sequence[int] | None = None,
    colour: str | None = None,
    *,
    class_names: Sequence[str] | None = None,
    num_classes: int | None = None,
    group_column: str | None = None,
) -> Dataset:
    """Load a labelled (or unlabelled) image set; see the module docstring for the kinds.

    split: "train", "test" or "val" where the source has splits (IDX folders, Keras .npz, image
        folders with train/ and test/, named sets). A single file (CSV, semeion.data, one IDX file)
        is the split the caller chose, so ``split`` is not used for it; a folder or .npz without
        splits accepts only "train".
    image_size: (H, W) or an int; images are resized (cv2.INTER_AREA) when they differ. Default:
        the source's size (for image folders, the size of the first image).
    colour: "grey" or "rgb"; default: the source's (for image folders, the first image's).
    class_names / num_classes: the class set, overriding the source's default (CSV: digits 0-9).
        Labels outside it are errors. For an image folder, class_names fixes the index order and
        every class folder must be one of them.
    group_column: for a Kaggle CSV, the name of a non-pixel column (``group``, ``source``, ...) to
        keep as ``Dataset.groups``; it must exist. By default a column named ``group`` is kept.
    """
    if isinstance(spec, Dataset):
        if group_column is not None:
            raise DataError(f"{spec.source or 'Dataset'}: group_column= applies when reading a CSV; "
                            "set Dataset.groups instead")
        return _conform(spec, _norm_size(image_size), _norm_colour(colour))
    size = _norm_size(image_size)
    col = _norm_colour(colour)
    names = _norm_class_names(class_names, num_classes)
    canon = _norm_split(split)

    path = Path(os.fspath(spec)).expanduser()
    text = os.fspath(spec)
    if group_column is not None and not _csv_source(path):
        raise DataError(f"{text}: group_column={group_column!r} applies to a Kaggle-style CSV (or a folder "
                        "holding train.csv / test.csv) only; give other sources' groups in a side file")
    if not path.exists():
        key = _named_key(text)
        if key is not None:
            ds = _load_named(key, canon, names)
            return _conform(ds, size, col)
        suggestion = difflib.get_close_matches(text.lower(), list(_NAMED_ALIASES), n=1)
        hint = f" Did you mean '{_NAMED_ALIASES[suggestion[0]]}'?" if suggestion else ""
        raise DataError(f"{text}: no such file or folder, and not a known dataset name.{hint}\n"
                        + _accepted_kinds_text())

    if path.is_dir():
        if _idx_files_in(path):
            ds = _load_idx_dir(path, canon, names)
        elif _csv_split_files(path):
            ds = _load_csv_dir(path, canon, names, group_column)
        else:
            return _load_image_tree(_dir_tree(path), canon, size, col, names)
        return _conform(ds, size, col)

    lower = path.name.lower()
    if lower.endswith((".csv", ".csv.gz")):
        ds = _load_kaggle_csv(path, names, group_column)
    elif lower.endswith(".npz"):
        ds = _load_npz(path, canon, names)
    elif lower.endswith(".zip"):
        try:
            archive = zipfile.ZipFile(path)
        except (OSError, zipfile.BadZipFile) as e:
            raise DataError(f"{path}: not a readable zip file ({e})") from e
        with archive:
            return _load_image_tree(_zip_tree(path, archive), canon, size, col, names)
    elif "semeion" in lower:
        ds = _load_semeion(path, names)
    elif "idx3-ubyte" in lower or "idx1-ubyte" in lower:
        ds = _load_idx_file(path, names)
    else:
        raise DataError(f"{path}: not a data file this loader knows.\n" + _accepted_kinds_text())
    return _conform(ds, size, col)


def _accepted_kinds_text() -> str:
    return "Accepted: " + "; ".join(f"({i}) {k}" for i, k in enumerate(ACCEPTED_KINDS, 1)) + "."


def _norm_split(split: str | None) -> str:
    if split is None:
        return "train"
    key = str(split).strip().lower()
    if key not in _SPLIT_ALIASES:
        raise DataError(f"unknown split {split!r}; use 'train', 'test' or 'val'")
    return _SPLIT_ALIASES[key]


def _norm_size(image_size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if isinstance(image_size, (int, np.integer)):
        h = w = int(image_size)
    else:
        try:
            h, w = (int(v) for v in image_size)
        except (TypeError, ValueError) as e:
            raise DataError(f"image_size must be an int or (height, width); got {image_size!r}") from e
    if h <= 0 or w <= 0:
        raise DataError(f"image_size must be positive; got {image_size!r}")
    return h, w


def _norm_colour(colour: str | None) -> str | None:
    if colour is None:
        return None
    key = str(colour).strip().lower()
    if key in ("grey", "gray", "greyscale", "grayscale", "l"):
        return "grey"
    if key == "rgb":
        return "rgb"
    raise DataError(f"colour must be 'grey' or 'rgb'; got {colour!r}")


def _norm_class_names(class_names: Sequence[str] | None, num_classes: int | None) -> list[str] | None:
    if class_names is not None:
        if isinstance(class_names, str):
            raise DataError("class_names must be a sequence of names, not one string")
        names = [str(c) for c in class_names]
        if not names or len(set(names)) != len(names):
            raise DataError(f"class_names must be non-empty and unique; got {names}")
        if num_classes is not None and num_classes != len(names):
            raise DataError(f"num_classes={num_classes} but {len(names)} class_names were given")
        return names
    if num_classes is not None:
        if int(num_classes) < 1:
            raise DataError(f"num_classes must be >= 1; got {num_classes}")
        return [str(i) for i in range(int(num_classes))]
    return None


def _conform(ds: Dataset, size: tuple[int, int] | None, colour: str | None) -> Dataset:
    """Convert colour and resize a whole Dataset when asked to (a no-op otherwise)."""
    x = ds.x
    if colour == "grey" and x.shape[-1] == 3:
        n, h, w, _ = x.shape
        x = cv2.cvtColor(x.reshape(n * h, w, 3), cv2.COLOR_RGB2GRAY).reshape(n, h, w, 1)
    elif colour == "rgb" and x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    if size is not None and x.shape[1:3] != size:
        out = np.empty((len(x), size[0], size[1], x.shape[-1]), np.uint8)
        for i, img in enumerate(x):
            out[i] = _resize(img, size).reshape(out.shape[1:])
        x = out
    if x is ds.x:
        return ds
    return Dataset(x=x, y=ds.y, class_names=ds.class_names, source=ds.source, ids=ds.ids, groups=ds.groups)


def _resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    if img.shape[:2] == (h, w):
        return img
    out = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
    if img.ndim == 3 and out.ndim == 2:
        out = out[..., None]
    return out


def _labels_array(y: Any, n: int, where: str, num_classes: int | None, field: str = "labels",
                  index_to_place: Callable[[int], str] | None = None) -> np.ndarray:
    """Validate labels: 1-D (or (N,1)) integers in 0..num_classes-1, as int64."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim == 2 and y.shape[0] == n and y.shape[1] > 1:
        raise DataError(f"{where}: {field} look one-hot, shape {y.shape}; store class indices "
                        "(argmax over the last axis)")
    if y.ndim != 1 or len(y) != n:
        raise DataError(f"{where}: {field} must have shape ({n},) to match the images; got {y.shape}")
    if y.dtype == bool or not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        raise DataError(f"{where}: {field} must be integer class indices; got dtype {y.dtype}")
    if np.issubdtype(y.dtype, np.floating):
        bad = np.flatnonzero(~np.isfinite(y) | (y != np.round(y)))
        if bad.size:
            i = int(bad[0])
            place = index_to_place(i) if index_to_place else f"index {i}"
            raise DataError(f"{where}: {place}: label {y[i]!r} is not an integer class index")
    y = y.astype(np.int64, copy=False)
    if num_classes is not None and n:
        bad = np.flatnonzero((y < 0) | (y >= num_classes))
        if bad.size:
            i = int(bad[0])
            place = index_to_place(i) if index_to_place else f"index {i}"
            raise DataError(f"{where}: {place}: label {int(y[i])} is outside the class set "
                            f"0..{num_classes - 1} ({bad.size} such label(s))")
    return y


def _images_array(x: Any, where: str) -> np.ndarray:
    """(N,H,W) or (N,H,W,C) pixel array with whole values 0-255 -> (N,H,W,C) uint8."""
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise DataError(f"{where}: images must be shaped (N, H, W) or (N, H, W, C); got {x.shape}")
    if x.shape[-1] not in (1, 3):
        if x.shape[1] in (1, 3):
            raise DataError(f"{where}: images look channels-first {x.shape}; store them as (N, H, W, C)")
        raise DataError(f"{where}: images must have 1 (grey) or 3 (RGB) channels; got shape {x.shape}")
    if x.dtype == np.uint8:
        return x
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)) or x.dtype == bool:
        raise DataError(f"{where}: images must hold numbers 0-255; got dtype {x.dtype}")
    if x.size:
        lo, hi = x.min(), x.max()
        if np.issubdtype(x.dtype, np.floating):
            if not np.isfinite(x).all() or (x != np.round(x)).any():
                extra = (" (they look scaled to [0, 1]: multiply by 255)" if 0 <= lo and hi <= 1 else "")
                raise DataError(f"{where}: images hold non-integer values in [{lo}, {hi}]; expected "
                                f"whole pixel values 0-255{extra}")
        if lo < 0 or hi > 255:
            raise DataError(f"{where}: pixel values span [{lo}, {hi}]; expected 0-255")
    return x.astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Kaggle digit-recognizer CSV
# --------------------------------------------------------------------------------------------
_PIXEL_RE = re.compile(r"pixel(\d+)")


def _read_bytes(path: Path) -> bytes:
    try:
        if path.name.lower().endswith(".gz"):
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise DataError(f"{path}: not a valid gzip file or truncated ({e})") from e
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e})") from e


def _csv_source(path: Path) -> bool:
    """Whether ``load_dataset`` reads ``path`` as a Kaggle CSV (a file, or a folder of split CSVs)."""
    if path.is_dir():
        return not _idx_files_in(path) and bool(_csv_split_files(path))
    return path.name.lower().endswith((".csv", ".csv.gz"))


def _csv_columns(path: Path, header: list[str], group_column: str | None = None
                 ) -> tuple[int | None, np.ndarray, int | None, int]:
    """-> (label column, pixel columns ordered pixel0..pixelN-1, group column, image side).

    The group column is ``group_column`` (which must exist) or, by default, ``group`` if present.
    """
    names = [h.strip() for h in header]
    if group_column is not None and (group_column == "label" or _PIXEL_RE.fullmatch(group_column)):
        raise DataError(f"{path}: group_column={group_column!r} must name a column other than "
                        "'label' and the pixel columns")
    if group_column is not None and group_column not in names:
        pixels = [n for n in names if _PIXEL_RE.fullmatch(n)]
        shown = [repr(n) for n in names if not _PIXEL_RE.fullmatch(n)]
        if pixels:
            shown.append(f"{pixels[0]}..{pixels[-1]} ({len(pixels)} pixel columns)")
        raise DataError(f"{path}: line 1: no column {group_column!r}; the columns are {', '.join(shown)}")
    label_col = group_col = None
    group_name = group_column or "group"
    pixel_at: dict[int, int] = {}
    for col, raw_name in enumerate(header):
        name = raw_name.strip()
        m = _PIXEL_RE.fullmatch(name)
        if m:
            k = int(m.group(1))
            if k in pixel_at:
                raise DataError(f"{path}: line 1: column '{name}' appears twice")
            pixel_at[k] = col
        elif name == "label":
            if label_col is not None:
                raise DataError(f"{path}: line 1: column 'label' appears twice")
            label_col = col
        elif name == group_name:
            if group_col is not None:
                raise DataError(f"{path}: line 1: column {name!r} appears twice")
            group_col = col
        elif name != "group":
            raise DataError(f"{path}: line 1: unexpected column {name!r} (column {col + 1}); a Kaggle "
                            "digit CSV has 'label' (optional), 'pixel0'..'pixelN' and optionally 'group' "
                            "(or another group column named by group_column=)")
    if not pixel_at:
        raise DataError(f"{path}: line 1: no pixel0.. columns; not a Kaggle digit-recognizer CSV")
    n = len(pixel_at)
    missing = [k for k in range(n) if k not in pixel_at]
    if missing:
        raise DataError(f"{path}: line 1: pixel columns must be pixel0..pixel{n - 1}; "
                        f"'pixel{missing[0]}' is missing")
    side = math.isqrt(n)
    if side * side != n:
        raise DataError(f"{path}: line 1: {n} pixel columns is not a square image (784 = 28x28)")
    return label_col, np.array([pixel_at[k] for k in range(n)]), group_col, side


def _load_kaggle_csv(path: Path, names: list[str] | None, group_column: str | None = None) -> Dataset:
    raw = _read_bytes(path)
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8):]
    if not raw.strip():
        raise DataError(f"{path}: the file is empty")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path}: line {line}: not UTF-8 text ({e.reason})") from e
    del raw
    lines = text.split("\n")
    header = next(csv.reader([lines[0].rstrip("\r")]))
    label_col, pixel_cols, group_col, side = _csv_columns(path, header, group_column)
    ncols = len(header)
    while len(lines) > 1 and not lines[-1].strip():
        lines.pop()
    body = lines[1:]
    if not body:
        raise DataError(f"{path}: no data rows below the header (line 1)")

    # Structure: every row has exactly the header's column count. Rows with quotes go through csv.
    for i, line in enumerate(body):
        found = line.count(",") + 1
        if '"' in line:
            found = len(next(csv.reader([line.rstrip("\r")]), []))
        if found != ncols:
            if not line.strip():
                raise DataError(f"{path}: line {i + 2}: empty line inside the data")
            raise DataError(f"{path}: line {i + 2}: {found} columns, expected {ncols} as in the header "
                            f"({_header_desc(header)})")

    numeric_cols = ([label_col] if label_col is not None else []) + list(pixel_cols)
    values = _csv_numeric(path, text, body, header, numeric_cols, group_col)
    labels = values[:, 0] if label_col is not None else None
    pixels = values[:, 1:] if label_col is not None else values

    bad = (pixels < 0) | (pixels > 255)
    if bad.any():
        r, c = (int(v) for v in np.argwhere(bad)[0])
        raise DataError(f"{path}: line {r + 2}, column '{header[pixel_cols[c]]}': pixel value "
                        f"{pixels[r, c]} is outside 0-255 ({int(bad.sum())} such value(s))")
    class_names = names or list(MNIST_CLASSES)
    y = None
    if labels is not None:
        y = _labels_array(labels, len(labels), str(path), len(class_names),
                          index_to_place=lambda i: f"line {i + 2}, column 'label'")
    groups = None
    if group_col is not None:
        reader = csv.reader(line.rstrip("\r") for line in body)
        groups = np.array([row[group_col].strip() for row in reader], dtype=str)
    x = pixels.astype(np.uint8).reshape(-1, side, side, 1)
    ids = np.arange(1, len(x) + 1, dtype=np.int64) if y is None else None
    return Dataset(x=x, y=y, class_names=class_names, source=str(path), ids=ids, groups=groups)


def _header_desc(header: list[str]) -> str:
    if len(header) <= 4:
        return ",".join(header)
    return f"{header[0]},{header[1]},...,{header[-1]}"


def _csv_numeric(path: Path, text: str, body: list[str], header: list[str], numeric_cols: list[int],
                 group_col: int | None) -> np.ndarray:
    """Parse the numeric columns fast (np.loadtxt); on failure find the exact bad field."""
    usecols = None if group_col is None and numeric_cols == list(range(len(header))) else numeric_cols
    start = text.index("\n") + 1
    for dtype in (np.int64, np.float64):
        try:
            values = np.loadtxt(io.StringIO(text[start:]), delimiter=",", dtype=dtype, usecols=usecols,
                                comments=None, ndmin=2, quotechar='"')
            break
        except ValueError:
            continue
    else:
        _csv_find_bad_field(path, body, header, numeric_cols)
        raise DataError(f"{path}: could not parse the numeric columns")  # pragma: no cover
    if values.shape != (len(body), len(numeric_cols)):  # pragma: no cover - guarded by the row check
        raise DataError(f"{path}: parsed {values.shape}, expected {(len(body), len(numeric_cols))}")
    if values.dtype == np.float64:
        bad = ~np.isfinite(values) | (values != np.round(values))
        if bad.any():
            r, c = (int(v) for v in np.argwhere(bad)[0])
            raise DataError(f"{path}: line {r + 2}, column '{header[numeric_cols[c]]}': "
                            f"{values[r, c]!r} is not a whole number")
        values = values.astype(np.int64)
    return values


def _csv_find_bad_field(path: Path, body: list[str], header: list[str], numeric_cols: list[int]) -> None:
    for i, row in enumerate(csv.reader(line.rstrip("\r") for line in body)):
        for c in numeric_cols:
            cell = row[c].strip()
            try:
                float(cell)
            except ValueError as e:
                problem = f"{cell!r} is not a number" if cell else "the value is empty"
                raise DataError(f"{path}: line {i + 2}, column '{header[c]}': {problem}") from e


def _csv_split_files(folder: Path) -> dict[str, Path]:
    found = {}
    for p in folder.iterdir():
        n = p.name.lower()
        for suffix in (".csv", ".csv.gz"):
            if n.endswith(suffix) and n[: -len(suffix)] in _SPLIT_ALIASES and p.is_file():
                found[_SPLIT_ALIASES[n[: -len(suffix)]]] = p
    return found


def _load_csv_dir(folder: Path, split: str, names: list[str] | None, group_column: str | None = None) -> Dataset:
    files = _csv_split_files(folder)
    if split not in files:
        raise DataError(f"{folder}: no {split}.csv here (found: {', '.join(sorted(p.name for p in files.values()))})")
    return _load_kaggle_csv(files[split], names, group_column)


# --------------------------------------------------------------------------------------------
# IDX (MNIST, Fashion-MNIST)
# --------------------------------------------------------------------------------------------
_IDX_DTYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (gzipped or not), checking the magic number and the size in the header."""
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataError(f"{path}: too short for an IDX file ({len(data)} bytes)")
    magic = struct.unpack(">I", data[:4])[0]
    code, ndim = data[2], data[3]
    if data[0] != 0 or data[1] != 0 or code not in _IDX_DTYPES or ndim == 0:
        raise DataError(f"{path}: wrong IDX magic number 0x{magic:08X} (expected 0x00000801 for labels, "
                        "0x00000803 for images); not an IDX file or not decompressed correctly")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: IDX header cut short ({len(data)} bytes, need {header})")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = _IDX_DTYPES[code]
    expected = math.prod(dims) * dtype.itemsize
    if len(data) - header != expected:
        shape = "x".join(str(d) for d in dims)
        raise DataError(f"{path}: count mismatch: the header says {shape} {dtype.name} values "
                        f"({expected} bytes) but the file holds {len(data) - header} bytes of data")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _idx_candidates(folder: Path, prefixes: Iterable[str], kind: str) -> list[Path]:
    ndim = "3" if kind == "images" else "1"
    out = []
    for p in prefixes:
        for stem in (f"{p}-{kind}-idx{ndim}-ubyte", f"{p}-{kind}.idx{ndim}-ubyte"):
            for suffix in (".gz", ""):
                out.append(folder / (stem + suffix))
    return out


_IDX_PREFIXES = {"train": ("train",), "test": ("t10k", "test"), "val": ("val", "valid")}


def _idx_files_in(folder: Path) -> bool:
    return any("idx3-ubyte" in p.name or "idx1-ubyte" in p.name for p in folder.iterdir() if p.is_file())


def _idx_class_names(folder: Path, names: list[str] | None) -> list[str]:
    if names is not None:
        return names
    for fname in ("classes.txt", "class_names.txt", "labels.txt"):
        f = folder / fname
        if f.is_file():
            listed = [ln.strip() for ln in f.read_text(encoding="utf-8").splitlines() if ln.strip()]
            if listed:
                return listed
    if "fashion" in str(folder.resolve()).lower():
        return list(FASHION_MNIST_CLASSES)
    return list(MNIST_CLASSES)


def _load_idx_dir(folder: Path, split: str, names: list[str] | None) -> Dataset:
    found = {}
    for s, prefixes in _IDX_PREFIXES.items():
        imgs = [p for p in _idx_candidates(folder, prefixes, "images") if p.is_file()]
        if imgs:
            found[s] = imgs[0]
    if split not in found:
        have = ", ".join(sorted(found)) or "none"
        raise DataError(f"{folder}: no IDX images file for split '{split}' (looked for "
                        f"{_idx_candidates(folder, _IDX_PREFIXES[split], 'images')[0].name}; "
                        f"splits found: {have})")
    return _load_idx_pair(found[split], _idx_class_names(folder, names))


def _load_idx_file(path: Path, names: list[str] | None) -> Dataset:
    name = path.name
    if "labels" in name and "idx1" in name:
        raise DataError(f"{path}: this is a labels file; point at the images file "
                        f"({name.replace('labels', 'images').replace('idx1', 'idx3')}) or its folder")
    return _load_idx_pair(path, _idx_class_names(path.parent, names))


def _load_idx_pair(images_path: Path, class_names: list[str]) -> Dataset:
    stem = images_path.name.replace("images", "labels").replace("idx3", "idx1")
    base = stem[:-3] if stem.endswith(".gz") else stem
    labels_path = next((images_path.parent / (base + s) for s in (".gz", "")
                        if (images_path.parent / (base + s)).is_file()), None)
    if labels_path is None:
        raise DataError(f"{images_path}: the labels file {base}.gz (or {base}) is missing beside it")
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{images_path}: expected uint8 images (N, H, W); the header says "
                        f"{images.dtype} {images.shape}")
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: expected a 1-D labels file; the header says shape {labels.shape}")
    if len(images) != len(labels):
        raise DataError(f"count mismatch: {images_path} holds {len(images)} images but {labels_path} "
                        f"holds {len(labels)} labels")
    y = _labels_array(labels, len(labels), str(labels_path), len(class_names))
    return Dataset(x=images[..., None], y=y, class_names=class_names, source=str(images_path))


# --------------------------------------------------------------------------------------------
# .npz
# --------------------------------------------------------------------------------------------
def _load_npz(path: Path, split: str, names: list[str] | None, source: str | None = None) -> Dataset:
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{path}: not a readable .npz file ({e})") from e
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: holds a single array, not an .npz archive with x/y keys")
    with archive:
        keys = set(archive.files)

        def get(key: str) -> np.ndarray:
            try:
                return archive[key]
            except ValueError as e:  # object arrays need pickle, which we do not allow
                raise DataError(f"{path}: key '{key}' cannot be read without pickle ({e}); store "
                                "plain numeric / string arrays") from e
            except (OSError, zipfile.BadZipFile, EOFError) as e:
                raise DataError(f"{path}: key '{key}' is corrupt ({e})") from e

        split_keys = {}
        for k in keys:
            if k.startswith("x_") and _SPLIT_ALIASES.get(k[2:].lower()):
                split_keys[_SPLIT_ALIASES[k[2:].lower()]] = k[2:]
        if split_keys:
            if split not in split_keys:
                raise DataError(f"{path}: no '{split}' split (keys: {', '.join(sorted(keys))})")
            sfx = split_keys[split]
            x_key, y_key = f"x_{sfx}", f"y_{sfx}"
            label_keys = [f"y_{s}" for s in split_keys.values() if f"y_{s}" in keys]
            extra = {"ids": f"ids_{sfx}", "groups": f"groups_{sfx}"}
        elif "x" in keys:
            if split != "train":
                raise DataError(f"{path}: holds one set (x, y) with no '{split}' split; load it with "
                                "split='train' and carve splits with stratified_split()")
            x_key, y_key, label_keys = "x", "y", ["y"] if "y" in keys else []
            extra = {"ids": "ids", "groups": "groups"}
        else:
            raise DataError(f"{path}: expected keys x_train, y_train, x_test, y_test (Keras layout) or "
                            f"x, y; found {', '.join(sorted(keys)) or 'none'}")
        x = _images_array(get(x_key), f"{path}[{x_key}]")
        class_names = names
        if class_names is None and "class_names" in keys:
            stored = get("class_names")
            if stored.ndim != 1 or not stored.size:
                raise DataError(f"{path}[class_names]: must be a 1-D list of names; got {stored.shape}")
            class_names = [str(c) for c in stored.tolist()]
        y = None
        if y_key in keys:
            y_raw = get(y_key)
            if class_names is None:
                top = -1
                for k in label_keys:
                    arr = get(k) if k != y_key else y_raw
                    if arr.size and (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
                        top = max(top, int(np.nanmax(arr)) if np.isfinite(arr).any() else -1)
                class_names = [str(i) for i in range(max(top + 1, 1))]
            y = _labels_array(y_raw, len(x), f"{path}[{y_key}]", len(class_names))
        class_names = class_names or []
        optional = {k: (get(v) if v in keys else None) for k, v in extra.items()}
    if optional["groups"] is not None:
        optional["groups"] = optional["groups"].astype(str)
    return Dataset(x=x, y=y, class_names=class_names, source=source or str(path), **optional)


# --------------------------------------------------------------------------------------------
# Image folders and zips
# --------------------------------------------------------------------------------------------
@dataclass
class _Tree:
    """A directory tree of files, from disk or a zip: relative POSIX paths and a byte reader."""

    files: list[str]
    dirs: set[str]
    read: Callable[[str], bytes]
    where: Callable[[str], str]
    root: str


def _hidden(parts: Iterable[str]) -> bool:
    return any(p.startswith(".") or p in _IGNORED_NAMES for p in parts)


def _dir_tree(folder: Path) -> _Tree:
    files, dirs = [], set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not _hidden([d]))
        rel = Path(dirpath).relative_to(folder).as_posix()
        rel = "" if rel == "." else rel
        if rel:
            dirs.add(rel)
        files.extend(f"{rel}/{f}" if rel else f for f in sorted(filenames) if not _hidden([f]))

    def read(rel: str) -> bytes:
        try:
            return (folder / rel).read_bytes()
        except OSError as e:
            raise DataError(f"{folder / rel}: cannot read ({e})") from e

    return _Tree(files, dirs, read, lambda rel: str(folder / rel), str(folder))


def _zip_tree(path: Path, zf: zipfile.ZipFile) -> _Tree:
    files, dirs = [], set()
    for info in zf.infolist():
        name = info.filename.strip("/")
        parts = name.split("/")
        if not name or _hidden(parts):
            continue
        for i in range(1, len(parts)):
            dirs.add("/".join(parts[:i]))
        if info.is_dir():
            dirs.add(name)
        else:
            files.append(name)
    members = {i.filename.strip("/"): i for i in zf.infolist()}

    def read(rel: str) -> bytes:
        try:
            return zf.read(members[rel])
        except (OSError, zipfile.BadZipFile, EOFError, KeyError) as e:
            raise DataError(f"{path}:{rel}: cannot read this zip member ({e})") from e

    return _Tree(sorted(files), dirs, read, lambda rel: f"{path}:{rel}", str(path))


def _strip_wrapper(tree: _Tree) -> str:
    """Descend through single wrapper folders (e.g. cifar10-jpeg/) that hold the whole tree."""
    prefix = ""
    while True:
        rels = [f[len(prefix):] for f in tree.files if f.startswith(prefix)]
        tops = {r.split("/", 1)[0] for r in rels}
        if (len(tops) == 1 and all(r.count("/") >= 2 for r in rels)
                and next(iter(tops)).lower() not in _SPLIT_ALIASES):
            prefix += next(iter(tops)) + "/"
            continue
        return prefix


def _subdirs(tree: _Tree, prefix: str) -> list[str]:
    depth = prefix.count("/")
    return sorted(d[len(prefix):] for d in tree.dirs
                  if d.startswith(prefix) and d.count("/") == depth and d != prefix.rstrip("/"))


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _load_image_tree(tree: _Tree, split: str, size: tuple[int, int] | None, colour: str | None,
                     names: list[str] | None) -> Dataset:
    if not tree.files and not tree.dirs:
        raise DataError(f"{tree.root}: no images (the folder is empty)")
    prefix = _strip_wrapper(tree)
    top = _subdirs(tree, prefix)
    split_dirs = {d: _SPLIT_ALIASES[d.lower()] for d in top if d.lower() in _SPLIT_ALIASES}
    loose = [f for f in tree.files if f.startswith(prefix) and "/" not in f[len(prefix):] and _is_image(f)]
    if loose:
        raise DataError(f"{tree.where(loose[0])}: image is not inside a class folder "
                        f"({len(loose)} such file(s)); put each image under <class>/")
    if split_dirs and len(split_dirs) != len(top):
        others = [d for d in top if d not in split_dirs]
        raise DataError(f"{tree.where(prefix.rstrip('/') or '.')}: mixes split folders "
                        f"({', '.join(split_dirs)}) with other folders ({', '.join(others)}); use either "
                        "<split>/<class>/ or <class>/ throughout")
    if split_dirs:
        chosen = [d for d, s in split_dirs.items() if s == split]
        if not chosen:
            raise DataError(f"{tree.root}: no '{split}' split folder (found: {', '.join(sorted(split_dirs))})")
        all_classes = sorted({c for d in split_dirs for c in _subdirs(tree, f"{prefix}{d}/")})
        base = f"{prefix}{chosen[0]}/"
        loose = [f for f in tree.files if f.startswith(base) and "/" not in f[len(base):] and _is_image(f)]
        if loose:
            raise DataError(f"{tree.where(loose[0])}: image is not inside a class folder")
        present = _subdirs(tree, base)
    else:
        if split != "train":
            raise DataError(f"{tree.root}: has class folders but no train/ or test/ split folders, so "
                            f"there is no '{split}' split; load it with split='train' and carve splits "
                            "with stratified_split()")
        base = prefix
        all_classes = present = top
    if not present:
        raise DataError(f"{tree.where(base.rstrip('/') or '.')}: no class folders and no images; expected "
                        "one sub-folder per class holding its images")
    if names is not None:
        unknown = [c for c in all_classes if c not in names]
        if unknown:
            raise DataError(f"{tree.where(base + unknown[0])}: class folder '{unknown[0]}' is not one of "
                            f"class_names {names}")
        class_names = list(names)
    else:
        class_names = list(all_classes)
    index = {c: i for i, c in enumerate(class_names)}

    by_class: dict[str, list[str]] = {cls: [] for cls in present}
    for f in tree.files:
        if f.startswith(base) and "/" in f[len(base):]:
            by_class.setdefault(f[len(base):].split("/", 1)[0], []).append(f)
    items: list[tuple[str, int]] = []
    skipped: list[str] = []
    for cls in present:
        cdir = f"{base}{cls}/"
        members = by_class[cls]
        images = [f for f in members if _is_image(f)]
        skipped.extend(f for f in members if not _is_image(f))
        if not images:
            raise DataError(f"{tree.where(cdir.rstrip('/'))}: class folder '{cls}' holds no images "
                            f"(extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})")
        items.extend((f, index[cls]) for f in images)
    if skipped:
        logger.warning("%s: skipped %d non-image file(s) in class folders, e.g. %s",
                       tree.root, len(skipped), tree.where(skipped[0]))

    first = _decode_image(tree.read(items[0][0]), tree.where(items[0][0]))
    colour = colour or ("rgb" if first.ndim == 3 else "grey")
    size = size or first.shape[:2]
    channels = 3 if colour == "rgb" else 1
    x = np.empty((len(items), size[0], size[1], channels), np.uint8)
    for i, (rel, _) in enumerate(items):
        img = first if i == 0 else _decode_image(tree.read(rel), tree.where(rel))
        x[i] = _resize(_to_colour(img, colour), size).reshape(x.shape[1:])
    y = np.array([label for _, label in items], dtype=np.int64)
    ids = np.array([rel[len(prefix):] for rel, _ in items], dtype=str)
    source = tree.root if not split_dirs else f"{tree.root} [{split}]"
    return Dataset(x=x, y=y, class_names=class_names, source=source, ids=ids)


def _decode_image(data: bytes, where: str) -> np.ndarray:
    """Bytes -> (H, W) grey or (H, W, 3) RGB uint8. OpenCV first, Pillow for what it cannot read."""
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_ANYCOLOR) if data else None
    if img is not None:
        if img.ndim == 3 and img.shape[2] == 3:
            return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        if img.ndim == 2:
            return img
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as e:  # pragma: no cover - Pillow is installed with the train extra
        raise DataError(f"{where}: not a readable image (corrupt or unsupported format)") from e
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            grey = im.mode in ("1", "L", "LA", "I", "I;16", "F")
            arr = np.asarray(im.convert("L" if grey else "RGB"))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"{where}: not a readable image (corrupt or unsupported format: {e})") from e
    return arr


def _to_colour(img: np.ndarray, colour: str) -> np.ndarray:
    if colour == "grey":
        return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) if img.ndim == 3 else img
    return img if img.ndim == 3 else cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)


# --------------------------------------------------------------------------------------------
# UCI Semeion
# --------------------------------------------------------------------------------------------
def _load_semeion(path: Path, names: list[str] | None) -> Dataset:
    raw = _read_bytes(path)
    if not raw.strip():
        raise DataError(f"{path}: the file is empty")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path}: line {line}: not text ({e.reason})") from e
    lines = text.split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    for i, line in enumerate(lines):
        found = len(line.split())
        if found != 266:
            what = "empty line inside the data" if not found else f"{found} values, expected 266"
            raise DataError(f"{path}: line {i + 1}: {what} (256 pixels of a 16x16 image, then 10 one-hot "
                            "label columns)")
    try:
        values = np.loadtxt(io.StringIO(text), dtype=np.float64, ndmin=2, comments=None)
    except ValueError:
        for i, line in enumerate(lines):
            for j, cell in enumerate(line.split()):
                try:
                    float(cell)
                except ValueError as e:
                    raise DataError(f"{path}: line {i + 1}, {_semeion_col(j)}: {cell!r} is not a number") from e
        raise
    bad = (values != 0) & (values != 1)
    if bad.any():
        r, c = (int(v) for v in np.argwhere(bad)[0])
        raise DataError(f"{path}: line {r + 1}, {_semeion_col(c)}: value {values[r, c]:g} is not 0 or 1")
    onehot = values[:, 256:]
    hot = onehot.sum(axis=1)
    if (hot != 1).any():
        r = int(np.flatnonzero(hot != 1)[0])
        raise DataError(f"{path}: line {r + 1}: the 10 label columns must hold exactly one 1 "
                        f"(found {int(hot[r])})")
    class_names = names or list(MNIST_CLASSES)
    y = _labels_array(onehot.argmax(axis=1), len(values), str(path), len(class_names),
                      index_to_place=lambda i: f"line {i + 1}")
    digits = values[:, :256].reshape(-1, 16, 16)
    x = np.stack([_mnist_like(d) for d in digits])[..., None]
    return Dataset(x=x, y=y, class_names=class_names, source=str(path))


def _semeion_col(j: int) -> str:
    if j < 256:
        return f"pixel {j} (row {j // 16}, column {j % 16})"
    return f"label column {j - 256}"


def _mnist_like(binary: np.ndarray) -> np.ndarray:
    """A binary digit -> 28x28 uint8 the way MNIST was made: fit the ink's bounding box in 20x20
    (aspect kept, anti-aliased), then place it so its centre of mass sits at the centre."""
    img = (binary > 0).astype(np.float32) * 255.0
    out = np.zeros((28, 28), np.uint8)
    rows, cols = np.flatnonzero(img.any(axis=1)), np.flatnonzero(img.any(axis=0))
    if not rows.size:
        return out
    crop = img[rows[0]: rows[-1] + 1, cols[0]: cols[-1] + 1]
    h, w = crop.shape
    scale = 20.0 / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    patch = np.clip(cv2.resize(crop, (nw, nh), interpolation=interp), 0, 255)
    mass = patch.sum()
    cy = (patch.sum(axis=1) @ np.arange(nh)) / mass
    cx = (patch.sum(axis=0) @ np.arange(nw)) / mass
    top = int(np.clip(round(14.0 - cy), 0, 28 - nh))
    left = int(np.clip(round(14.0 - cx), 0, 28 - nw))
    out[top: top + nh, left: left + nw] = np.round(patch).astype(np.uint8)
    return out


# --------------------------------------------------------------------------------------------
# Named datasets (Keras cache / download)
# --------------------------------------------------------------------------------------------
_NAMED_ALIASES = {
    "mnist": "mnist",
    "fashion_mnist": "fashion_mnist", "fashion-mnist": "fashion_mnist", "fashionmnist": "fashion_mnist",
    "cifar10": "cifar10", "cifar-10": "cifar10", "cifar_10": "cifar10",
}
_NAMED_CLASSES = {"mnist": MNIST_CLASSES, "fashion_mnist": FASHION_MNIST_CLASSES, "cifar10": CIFAR10_CLASSES}


def _named_key(text: str) -> str | None:
    return _NAMED_ALIASES.get(text.strip().lower())


def keras_cache_dir() -> Path:
    """Where Keras keeps downloaded datasets: $KERAS_HOME, else ~/.keras (files under datasets/)."""
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras").expanduser()


def _load_named(key: str, split: str, names: list[str] | None) -> Dataset:
    if split not in ("train", "test"):
        raise DataError(f"{key}: has splits 'train' and 'test'; got '{split}'")
    class_names = names or list(_NAMED_CLASSES[key])
    cache = keras_cache_dir()
    datasets = cache / "datasets"
    if key == "mnist" and (datasets / "mnist.npz").is_file():
        logger.info("mnist: using the Keras cache %s", datasets / "mnist.npz")
        return _load_npz(datasets / "mnist.npz", split, class_names, source="mnist")
    if key == "fashion_mnist" and (datasets / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").is_file():
        logger.info("fashion_mnist: using the Keras cache %s", datasets / "fashion-mnist")
        ds = _load_idx_dir(datasets / "fashion-mnist", split, class_names)
        ds.source = "fashion_mnist"
        return ds
    expected = {"mnist": datasets / "mnist.npz", "fashion_mnist": datasets / "fashion-mnist",
                "cifar10": datasets / "cifar-10-batches-py"}[key]
    hint = (f"Without internet, point at local files instead, e.g. `--data path/to/{key}/` (a folder "
            "with the IDX files train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
            "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz), or a .npz with x_train, y_train, "
            "x_test, y_test (examples/mnist_sample.npz is a small MNIST one), or put the Keras file at "
            f"{expected}.")
    if key == "cifar10":
        hint = ("Without internet, point at local files instead, e.g. `--data cifar10-jpeg.zip` or a "
                f"folder of <split>/<class>/*.jpg, or put the Keras files at {expected}.")
    try:
        from train._tf import keras
    except ImportError as e:
        raise DataError(f"{key}: not in the Keras cache ({expected}) and TensorFlow is not installed "
                        f"to download it. {hint}") from e
    cache.mkdir(parents=True, exist_ok=True)
    try:
        (x_tr, y_tr), (x_te, y_te) = getattr(keras.datasets, key).load_data(cache_dir=str(cache))
    except Exception as e:  # noqa: BLE001 - get_file raises bare Exception on network failure
        raise DataError(f"{key}: not in the Keras cache ({expected}) and the download failed "
                        f"({type(e).__name__}: {e}). {hint}") from e
    x, y = (x_tr, y_tr) if split == "train" else (x_te, y_te)
    x = _images_array(x, f"{key}[{split}]")
    return Dataset(x=x, y=_labels_array(y, len(x), key, len(class_names)), class_names=class_names,
                   source=key)


# --------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------
def _pixel_histograms(x: np.ndarray, chunk: int = 1 << 20) -> np.ndarray:
    channels = x.shape[-1]
    flat = x.reshape(-1, channels)
    hist = np.zeros((channels, 256), np.int64)
    for start in range(0, len(flat), chunk):
        block = flat[start: start + chunk]
        for c in range(channels):
            hist[c] += np.bincount(block[:, c], minlength=256)
    return hist


def _hist_stats(hist: np.ndarray) -> dict[str, float]:
    values = np.arange(256, dtype=np.float64)
    n = hist.sum()
    if not n:
        return {"mean": float("nan"), "std": float("nan"), "min": float("nan"), "max": float("nan")}
    mean = float(hist @ values / n)
    std = float(np.sqrt(hist @ (values - mean) ** 2 / n))
    nz = np.flatnonzero(hist)
    return {"mean": mean, "std": std, "min": int(nz[0]), "max": int(nz[-1])}


def summarize(ds: Dataset, imbalance_threshold: float = 1.5) -> dict[str, Any]:
    """Counts per class, pixel statistics and class imbalance of a Dataset, as plain Python values.

    Logs a warning when the imbalance ratio (largest / smallest class count) exceeds
    ``imbalance_threshold`` or a class has no samples.
    """
    h, w, c = ds.image_shape
    hist = _pixel_histograms(ds.x)
    overall = _hist_stats(hist.sum(axis=0))
    per_channel = [_hist_stats(hc) for hc in hist]
    out: dict[str, Any] = {
        "source": ds.source,
        "n": len(ds),
        "image_shape": [h, w, c],
        "height": h, "width": w, "channels": c,
        "colour": "rgb" if c == 3 else "grey",
        "num_classes": ds.num_classes,
        "labelled": ds.y is not None,
        "pixel_mean": overall["mean"], "pixel_std": overall["std"],
        "pixel_min": overall["min"], "pixel_max": overall["max"],
        "channel_mean": [s["mean"] for s in per_channel],
        "channel_std": [s["std"] for s in per_channel],
        "classes": [], "imbalance_ratio": None, "imbalance_threshold": float(imbalance_threshold),
        "imbalanced": False, "empty_classes": [], "groups": None,
    }
    if ds.y is not None:
        counts = ds.class_counts()
        n = max(len(ds), 1)
        out["classes"] = [{"label": i, "name": name, "count": int(k), "percent": 100.0 * int(k) / n}
                          for i, (name, k) in enumerate(zip(ds.class_names, counts))]
        empty = [ds.class_names[i] for i in np.flatnonzero(counts == 0)]
        out["empty_classes"] = empty
        if counts.size:
            ratio = float("inf") if empty else float(counts.max() / counts.min())
            out["imbalance_ratio"] = ratio
            out["imbalanced"] = ratio > imbalance_threshold
            if empty:
                logger.warning("%s: %d class(es) have no samples: %s", ds.source, len(empty), ", ".join(empty))
            elif out["imbalanced"]:
                logger.warning("%s: class imbalance ratio %.2f (largest/smallest class) exceeds %.2f; "
                               "consider stratified splits, class weights or resampling",
                               ds.source, ratio, imbalance_threshold)
    if ds.groups is not None:
        names, counts = np.unique(ds.groups, return_counts=True)
        out["groups"] = {str(g): int(k) for g, k in zip(names, counts)}
    return out


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as a text table (label, name, count, percent), like seed 000's Table 1."""
    s = summary
    lines = [
        f"Dataset: {s['source']}",
        f"Samples: {s['n']:,}   image: {s['height']}x{s['width']}x{s['channels']} ({s['colour']})",
        f"Pixels (0-255): mean {s['pixel_mean']:.2f}  std {s['pixel_std']:.2f}  "
        f"min {s['pixel_min']}  max {s['pixel_max']}",
    ]
    if s["channels"] > 1:
        lines.append("Per channel (R, G, B): mean " + ", ".join(f"{m:.2f}" for m in s["channel_mean"])
                     + "  std " + ", ".join(f"{v:.2f}" for v in s["channel_std"]))
    if not s["labelled"]:
        lines.append("Unlabelled: no class counts.")
    else:
        rows = [(str(c["label"]), c["name"], f"{c['count']:,}", f"{c['percent']:.2f}%") for c in s["classes"]]
        rows.append(("Total", "", f"{sum(c['count'] for c in s['classes']):,}", "100.00%" if s["n"] else "-"))
        head = ("Label", "Name", "Count", "Percent")
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
        fmt = lambda r: "  ".join((r[i].ljust if i < 2 else r[i].rjust)(widths[i]) for i in range(4))  # noqa: E731
        lines += ["", fmt(head), "  ".join("-" * wd for wd in widths)]
        lines += [fmt(r) for r in rows[:-1]] + ["  ".join("-" * wd for wd in widths), fmt(rows[-1])]
        ratio = s["imbalance_ratio"]
        if ratio is not None:
            flag = f"  (above {s['imbalance_threshold']:g}: imbalanced)" if s["imbalanced"] else ""
            lines.append(f"Imbalance ratio (largest/smallest class): {ratio:.2f}{flag}")
        if s["empty_classes"]:
            lines.append(f"Classes with no samples: {', '.join(s['empty_classes'])}")
    if s.get("groups"):
        lines.append("Groups: " + ", ".join(f"{g}: {k:,}" for g, k in s["groups"].items()))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Splits and samples
# --------------------------------------------------------------------------------------------
def _require_labels(ds: Dataset, what: str) -> np.ndarray:
    if ds.y is None:
        raise DataError(f"{ds.source}: {what} needs labels, and this set is unlabelled")
    return ds.y


def stratified_split(ds: Dataset, val_fraction: float = 0.1, test_fraction: float = 0.0,
                     seed: int = 42) -> dict[str, Dataset]:
    """Split into train / val (/ test) with each class's share preserved (sklearn train_test_split).

    Sizes are round(fraction * N): 42,000 rows with val_fraction=0.1 give 37,800 / 4,200.
    Each part keeps the source order (shuffle when training).
    """
    if not 0 < val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError(f"need 0 < val_fraction < 1, 0 <= test_fraction < 1 and a sum below 1; got "
                         f"val_fraction={val_fraction}, test_fraction={test_fraction}")
    from sklearn.model_selection import train_test_split

    y = _require_labels(ds, "stratified_split")
    n = len(ds)
    n_val, n_test = int(round(val_fraction * n)), int(round(test_fraction * n))
    if n_val < 1 or (test_fraction and n_test < 1):
        raise DataError(f"{ds.source}: {n} samples are too few for val_fraction={val_fraction}, "
                        f"test_fraction={test_fraction}")
    idx = np.arange(n)
    out_idx: dict[str, np.ndarray] = {}
    try:
        if n_test:
            idx, out_idx["test"] = train_test_split(idx, test_size=n_test, stratify=y, random_state=seed)
        out_idx["train"], out_idx["val"] = train_test_split(idx, test_size=n_val, stratify=y[idx],
                                                            random_state=seed)
    except ValueError as e:
        raise DataError(f"{ds.source}: cannot make a stratified split ({e})") from e
    return {k: ds.subset(np.sort(out_idx[k])) for k in ("train", "val", "test") if k in out_idx}


def kfold_indices(ds: Dataset, k: int = 5, seed: int = 42) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified K-fold: k (train_idx, val_idx) pairs; every sample is in exactly one val fold."""
    from sklearn.model_selection import StratifiedKFold

    y = _require_labels(ds, "kfold_indices")
    if k < 2:
        raise ValueError(f"k must be >= 2; got {k}")
    try:
        folds = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        return [(tr.astype(np.int64), va.astype(np.int64)) for tr, va in folds.split(np.zeros(len(y)), y)]
    except ValueError as e:
        raise DataError(f"{ds.source}: cannot make {k} stratified folds ({e})") from e


def stratified_sample(ds: Dataset, n: int, seed: int = 42) -> Dataset:
    """n samples with the class proportions of ``ds`` (e.g. a calibration set); source order kept."""
    if n < 1 or n > len(ds):
        raise ValueError(f"n must be in 1..{len(ds)}; got {n}")
    if n == len(ds):
        return ds.subset(np.arange(n))
    if ds.y is None:
        pick = np.random.default_rng(seed).choice(len(ds), size=n, replace=False)
        return ds.subset(np.sort(pick))
    from sklearn.model_selection import train_test_split

    try:
        pick, _ = train_test_split(np.arange(len(ds)), train_size=n, stratify=ds.y, random_state=seed)
    except ValueError as e:
        raise DataError(f"{ds.source}: cannot draw a stratified sample of {n} ({e})") from e
    return ds.subset(np.sort(pick))


# --------------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------------
def write_kaggle_submission(ids: Sequence[int] | np.ndarray | None, predictions: Any,
                            path: str | os.PathLike) -> Path:
    """Write a Kaggle submission CSV ``ImageId,Label``. predictions: class indices (N,), or scores
    (N, K) whose argmax is taken. ids None means 1..N."""
    preds = np.asarray(predictions)
    if preds.ndim == 2:
        preds = preds.argmax(axis=1)
    if preds.ndim != 1:
        raise ValueError(f"predictions must be (N,) labels or (N, K) scores; got shape {preds.shape}")
    if preds.size and not np.issubdtype(preds.dtype, np.integer):
        if not np.all(preds == np.round(preds)):
            raise ValueError("predictions must be integer labels (or (N, K) scores)")
    ids_arr = np.arange(1, len(preds) + 1) if ids is None else np.asarray(ids)
    if ids_arr.shape != preds.shape:
        raise ValueError(f"{len(ids_arr)} ids but {len(preds)} predictions")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["ImageId", "Label"])
        writer.writerows(zip(ids_arr.tolist(), preds.astype(np.int64).tolist()))
    return path


def write_kaggle_csv(ds: Dataset, path: str | os.PathLike, with_label: bool = True) -> Path:
    """Write a Dataset as a Kaggle digit-recognizer CSV (``label,pixel0..`` or ``pixel0..`` only);
    a ``group`` column is added when the Dataset has groups. Grey square images only."""
    h, w, c = ds.image_shape
    if c != 1 or h != w:
        raise DataError(f"{ds.source}: a Kaggle digit CSV holds square grey images; this set is {h}x{w}x{c} "
                        "(load it with colour='grey' and a square image_size)")
    if with_label and ds.y is None:
        raise DataError(f"{ds.source}: unlabelled; write it with with_label=False")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (["label"] if with_label else []) + [f"pixel{i}" for i in range(h * w)]
    if ds.groups is not None:
        header.append("group")
    lut = [str(v) for v in range(256)]
    flat = ds.x.reshape(len(ds), -1)
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "wt", newline="", encoding="utf-8") as f:
        f.write(",".join(header) + "\n")
        for start in range(0, len(ds), 2000):
            block = flat[start: start + 2000].tolist()
            out = []
            for j, row in enumerate(block):
                cells = [lut[v] for v in row]
                if with_label:
                    cells.insert(0, str(int(ds.y[start + j])))  # type: ignore[index]
                if ds.groups is not None:
                    cells.append(_csv_cell(str(ds.groups[start + j])))
                out.append(",".join(cells))
            f.write("\n".join(out) + "\n")
    return path


def _csv_cell(value: str) -> str:
    if any(ch in value for ch in ',"\r\n'):
        return '"' + value.replace('"', '""') + '"'
    return value


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def _size_arg(text: str) -> tuple[int, int]:
    parts = re.split(r"[x,]", text.lower())
    try:
        vals = [int(p) for p in parts]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected N or HxW, got {text!r}") from e
    if len(vals) == 1:
        return vals[0], vals[0]
    if len(vals) == 2:
        return vals[0], vals[1]
    raise argparse.ArgumentTypeError(f"expected N or HxW, got {text!r}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.data", description="Inspect and convert datasets.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_sum = sub.add_parser("summary", help="print per-class counts and pixel statistics")
    p_sum.add_argument("spec", help="path or dataset name (see load_dataset)")
    p_sum.add_argument("--split", default="train")
    p_sum.add_argument("--image-size", type=_size_arg, default=None, help="N or HxW")
    p_sum.add_argument("--colour", "--color", dest="colour", choices=["grey", "gray", "rgb"], default=None)
    p_sum.add_argument("--imbalance-threshold", type=float, default=1.5)
    p_sum.add_argument("--json", action="store_true", help="print the summary as JSON")
    p_csv = sub.add_parser("kaggle-csv", help="write a Kaggle digit-recognizer CSV from a dataset")
    p_csv.add_argument("--from", dest="source", required=True, help="path or dataset name")
    p_csv.add_argument("--split", default="train")
    p_csv.add_argument("--rows", type=int, default=None, help="the first N samples (default: all)")
    p_csv.add_argument("--out", required=True)
    p_csv.add_argument("--unlabelled", "--unlabeled", action="store_true",
                       help="pixel columns only, like Kaggle's test.csv")
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "summary":
            ds = load_dataset(args.spec, split=args.split, image_size=args.image_size, colour=args.colour)
            summary = summarize(ds, imbalance_threshold=args.imbalance_threshold)
            print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
        else:
            ds = load_dataset(args.source, split=args.split)
            if args.rows is not None:
                if not 0 < args.rows <= len(ds):
                    raise DataError(f"{ds.source}: --rows must be in 1..{len(ds)}; got {args.rows}")
                ds = ds.subset(slice(0, args.rows))
            out = write_kaggle_csv(ds, args.out, with_label=not args.unlabelled)
            print(f"wrote {out} ({len(ds):,} rows{', unlabelled' if args.unlabelled else ''})")
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0

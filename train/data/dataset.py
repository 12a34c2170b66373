"""The in-memory :class:`Dataset`, :class:`DataError`, and what every format's loader shares.

A loader turns its file into ``uint8`` images ``(N, H, W, C)`` and ``int64`` labels with
:func:`images_array` and :func:`labels_array` (which name the file and place at fault), reads
with :func:`read_bytes` / :func:`read_text`, and receives what the caller asked for as a
:class:`Request`. :func:`conform` applies the asked-for colour and size to a whole set.
"""
from __future__ import annotations

import codecs
import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from train.errors import InputError

__all__ = [
    "CIFAR10_CLASSES", "FASHION_MNIST_CLASSES", "MNIST_CLASSES", "SPLIT_ALIASES", "DataError", "Dataset",
    "Request", "conform", "images_array", "labels_array", "read_bytes", "read_text", "resize_image",
]

MNIST_CLASSES: tuple[str, ...] = tuple(str(i) for i in range(10))
FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)

# Split folder / key names as they appear in the wild, mapped to the canonical split.
SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "test": "test", "testing": "test", "t10k": "test",
    "val": "val", "valid": "val", "validation": "val",
}


class DataError(InputError):
    """Input data is missing, malformed or inconsistent. The message names the file and place.

    An :class:`train.errors.InputError` (so a ``ValueError``): a command exits with ``ExitCode.INPUT``.
    """


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
            self.y = labels_array(self.y, n, where, len(self.class_names), field="y")
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


@dataclass(frozen=True)
class Request:
    """What a caller of ``load_dataset`` asked for, checked and normalised: a format's detector
    and loader get it whole."""

    spec: str                                  # as given (a path, or a dataset name)
    path: Path                                 # ``spec`` as a path, ``~`` expanded
    split: str                                 # "train", "test" or "val"
    image_size: tuple[int, int] | None = None  # (H, W)
    colour: str | None = None                  # "grey" or "rgb"
    class_names: list[str] | None = None
    group_column: str | None = None


# --------------------------------------------------------------------------------------------
# Shared by the loaders
# --------------------------------------------------------------------------------------------
def read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when its name ends in ``.gz``."""
    try:
        if path.name.lower().endswith(".gz"):
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise DataError(f"{path}: not a valid gzip file or truncated ({e})") from e
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e})") from e


def read_text(path: Path, what: str = "text", strip_bom: bool = False) -> str:
    """The file as UTF-8 text; empty (or blank) files and undecodable bytes are errors naming the line.

    what: how the refusal describes the expected content (``line 3: not <what> (...)``).
    """
    raw = read_bytes(path)
    if strip_bom and raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8):]
    if not raw.strip():
        raise DataError(f"{path}: the file is empty")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path}: line {line}: not {what} ({e.reason})") from e


def conform(ds: Dataset, size: tuple[int, int] | None, colour: str | None) -> Dataset:
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
            out[i] = resize_image(img, size).reshape(out.shape[1:])
        x = out
    if x is ds.x:
        return ds
    return Dataset(x=x, y=ds.y, class_names=ds.class_names, source=ds.source, ids=ds.ids, groups=ds.groups)


def resize_image(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """One image to ``size`` (H, W) with ``cv2.INTER_AREA``; a channel axis it had is kept."""
    h, w = size
    if img.shape[:2] == (h, w):
        return img
    out = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
    if img.ndim == 3 and out.ndim == 2:
        out = out[..., None]
    return out


def labels_array(y: Any, n: int, where: str, num_classes: int | None, field: str = "labels",
                 index_to_place: Callable[[int], str] | None = None) -> np.ndarray:
    """Validate labels: 1-D (or (N,1)) integers in 0..num_classes-1, as int64.

    index_to_place: how a bad label's index is named in the message (default ``index <i>``).
    """
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
    place = index_to_place or (lambda i: f"index {i}")
    if np.issubdtype(y.dtype, np.floating):
        bad = np.flatnonzero(~np.isfinite(y) | (y != np.round(y)))
        if bad.size:
            i = int(bad[0])
            raise DataError(f"{where}: {place(i)}: label {y[i]!r} is not an integer class index")
    y = y.astype(np.int64, copy=False)
    if num_classes is not None and n:
        bad = np.flatnonzero((y < 0) | (y >= num_classes))
        if bad.size:
            i = int(bad[0])
            raise DataError(f"{where}: {place(i)}: label {int(y[i])} is outside the class set "
                            f"0..{num_classes - 1} ({bad.size} such label(s))")
    return y


def images_array(x: Any, where: str) -> np.ndarray:
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

"""The UCI Semeion handwritten digits file (``semeion.data``), made MNIST-like at 28x28.

Each line holds 256 values 0/1 (a 16x16 binary digit, row by row) and 10 one-hot label columns.
The digit is placed the way MNIST's were, and the way the device's digit mode places a camera's
(:func:`sdk.preprocess.centre_digit`): its ink fitted in a 20x20 box, centred by mass in 28x28.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from sdk.preprocess import centre_digit
from train.data.dataset import MNIST_CLASSES, DataError, Dataset, Request, labels_array, read_text

__all__ = ["ACCEPTS", "detect", "load", "load_semeion", "mnist_like"]

ACCEPTS = "the UCI semeion.data file"

_VALUES = 266  # 256 pixels of a 16x16 image, then 10 one-hot label columns


def detect(request: Request) -> bool:
    return request.path.is_file() and "semeion" in request.path.name.lower()


def load(request: Request) -> Dataset:
    return load_semeion(request.path, request.class_names)


def load_semeion(path: Path, names: list[str] | None) -> Dataset:
    """The whole file (Semeion has no splits), digits 0-9 unless ``names`` says otherwise."""
    text = read_text(path, "text")
    lines = text.split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    for i, line in enumerate(lines):
        found = len(line.split())
        if found != _VALUES:
            what = "empty line inside the data" if not found else f"{found} values, expected {_VALUES}"
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
                    raise DataError(f"{path}: line {i + 1}, {_column(j)}: {cell!r} is not a number") from e
        raise
    bad = (values != 0) & (values != 1)
    if bad.any():
        r, c = (int(v) for v in np.argwhere(bad)[0])
        raise DataError(f"{path}: line {r + 1}, {_column(c)}: value {values[r, c]:g} is not 0 or 1")
    onehot = values[:, 256:]
    hot = onehot.sum(axis=1)
    if (hot != 1).any():
        r = int(np.flatnonzero(hot != 1)[0])
        raise DataError(f"{path}: line {r + 1}: the 10 label columns must hold exactly one 1 "
                        f"(found {int(hot[r])})")
    class_names = names or list(MNIST_CLASSES)
    y = labels_array(onehot.argmax(axis=1), len(values), str(path), len(class_names),
                     index_to_place=lambda i: f"line {i + 1}")
    digits = values[:, :256].reshape(-1, 16, 16)
    x = np.stack([mnist_like(d) for d in digits])[..., None]
    return Dataset(x=x, y=y, class_names=class_names, source=str(path))


def _column(j: int) -> str:
    if j < 256:
        return f"pixel {j} (row {j // 16}, column {j % 16})"
    return f"label column {j - 256}"


def mnist_like(binary: np.ndarray) -> np.ndarray:
    """A binary digit (ink > 0) -> 28x28 uint8, light on dark, the way MNIST was made: the ink's
    bounding box fitted in 20x20 (aspect kept, anti-aliased), centred by its centre of mass.

    The device's :func:`sdk.preprocess.centre_digit` does the fitting and centring; its
    ``find_digit`` is not used: it finds ink on a camera's paper (local contrast, the largest
    blob, a contrast stretch), which a clean binary digit does not need and would alter.
    """
    ink = (np.asarray(binary) > 0).astype(np.uint8) * 255
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    if not rows.size:
        return np.zeros((28, 28), np.uint8)
    return centre_digit(ink[rows[0]: rows[-1] + 1, cols[0]: cols[-1] + 1], (28, 28))

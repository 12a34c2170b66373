"""MNIST-style IDX files (MNIST, Fashion-MNIST): a folder of them, or one images file.

``train-images-idx3-ubyte[.gz]`` pairs with ``train-labels-idx1-ubyte[.gz]`` beside it (``t10k-``
or ``test-`` for the test split). Class names come from ``classes.txt`` / ``class_names.txt`` /
``labels.txt`` in the folder, else Fashion-MNIST's for a path that says "fashion", else digits.
"""
from __future__ import annotations

import math
import os
import struct
from pathlib import Path
from typing import Iterable

import numpy as np

from train.data.dataset import FASHION_MNIST_CLASSES, MNIST_CLASSES, DataError, Dataset, Request, labels_array, read_bytes

__all__ = ["ACCEPTS", "detect", "has_idx_files", "load", "load_idx_file", "load_idx_folder", "read_idx"]

ACCEPTS = ("a folder of MNIST-style IDX files (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
           "t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]) or one ...-images-idx3-ubyte[.gz] file")

_DTYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
           0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_PREFIXES = {"train": ("train",), "test": ("t10k", "test"), "val": ("val", "valid")}


def has_idx_files(folder: Path) -> bool:
    """Whether ``folder`` holds a file named like an IDX file."""
    return any("idx3-ubyte" in p.name or "idx1-ubyte" in p.name for p in folder.iterdir() if p.is_file())


def detect(request: Request) -> bool:
    """A folder with IDX files, or a file named ``...idx3-ubyte...`` / ``...idx1-ubyte...`` that is
    not a ``.npz``, a ``.zip`` or a Semeion file (those formats read such a name as theirs)."""
    path = request.path
    if path.is_dir():
        return has_idx_files(path)
    name = path.name.lower()
    return (path.is_file() and ("idx3-ubyte" in name or "idx1-ubyte" in name)
            and not name.endswith((".npz", ".zip")) and "semeion" not in name)


def load(request: Request) -> Dataset:
    if request.path.is_dir():
        return load_idx_folder(request.path, request.split, request.class_names)
    return load_idx_file(request.path, request.class_names)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (gzipped or not), checking the magic number and the size in the header."""
    path = Path(path)
    data = read_bytes(path)
    if len(data) < 4:
        raise DataError(f"{path}: too short for an IDX file ({len(data)} bytes)")
    magic = struct.unpack(">I", data[:4])[0]
    code, ndim = data[2], data[3]
    if data[0] != 0 or data[1] != 0 or code not in _DTYPES or ndim == 0:
        raise DataError(f"{path}: wrong IDX magic number 0x{magic:08X} (expected 0x00000801 for labels, "
                        "0x00000803 for images); not an IDX file or not decompressed correctly")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: IDX header cut short ({len(data)} bytes, need {header})")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = _DTYPES[code]
    expected = math.prod(dims) * dtype.itemsize
    if len(data) - header != expected:
        shape = "x".join(str(d) for d in dims)
        raise DataError(f"{path}: count mismatch: the header says {shape} {dtype.name} values "
                        f"({expected} bytes) but the file holds {len(data) - header} bytes of data")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def load_idx_folder(folder: Path, split: str, names: list[str] | None) -> Dataset:
    """The images and labels of ``split`` in a folder of IDX files."""
    found = {}
    for s, prefixes in _PREFIXES.items():
        imgs = [p for p in _candidates(folder, prefixes, "images") if p.is_file()]
        if imgs:
            found[s] = imgs[0]
    if split not in found:
        have = ", ".join(sorted(found)) or "none"
        raise DataError(f"{folder}: no IDX images file for split '{split}' (looked for "
                        f"{_candidates(folder, _PREFIXES[split], 'images')[0].name}; "
                        f"splits found: {have})")
    return _load_pair(found[split], _class_names(folder, names))


def load_idx_file(path: Path, names: list[str] | None) -> Dataset:
    """One IDX images file and the labels file beside it."""
    name = path.name
    if "labels" in name and "idx1" in name:
        raise DataError(f"{path}: this is a labels file; point at the images file "
                        f"({name.replace('labels', 'images').replace('idx1', 'idx3')}) or its folder")
    return _load_pair(path, _class_names(path.parent, names))


def _candidates(folder: Path, prefixes: Iterable[str], kind: str) -> list[Path]:
    ndim = "3" if kind == "images" else "1"
    out = []
    for p in prefixes:
        for stem in (f"{p}-{kind}-idx{ndim}-ubyte", f"{p}-{kind}.idx{ndim}-ubyte"):
            for suffix in (".gz", ""):
                out.append(folder / (stem + suffix))
    return out


def _class_names(folder: Path, names: list[str] | None) -> list[str]:
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


def _load_pair(images_path: Path, class_names: list[str]) -> Dataset:
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
    y = labels_array(labels, len(labels), str(labels_path), len(class_names))
    return Dataset(x=images[..., None], y=y, class_names=class_names, source=str(images_path))

""":func:`load_dataset`: one entry point for every kind of source, through the table :data:`FORMATS`.

Each format (one module each) gives a detector and a loader, both taking the checked
:class:`~train.data.dataset.Request`. The formats are tried in the table's order and the first
whose detector accepts the input loads it; the table is also the "Accepted:" list an unknown
input is answered with (:data:`ACCEPTED_KINDS`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import numpy as np

from train.data import idx, image_tree, kaggle_csv, keras_named, npz, semeion
from train.data.dataset import SPLIT_ALIASES, DataError, Dataset, Request, conform

__all__ = ["ACCEPTED_KINDS", "FORMATS", "Format", "load_dataset"]


class Format(NamedTuple):
    """One kind of source ``load_dataset`` reads."""

    accepts: str                           # what it is, for the "Accepted:" list
    detect: Callable[[Request], bool]      # whether this input is one
    load: Callable[[Request], Dataset]


# Tried in this order. A folder holding IDX files is IDX even beside train.csv (kaggle_csv's detector
# says so); image_tree takes any other folder; a .zip or a .npz is that, whatever else its name says.
FORMATS: dict[str, Format] = {
    "kaggle_csv": Format(kaggle_csv.ACCEPTS, kaggle_csv.detect, kaggle_csv.load),
    "idx": Format(idx.ACCEPTS, idx.detect, idx.load),
    "npz": Format(npz.ACCEPTS, npz.detect, npz.load),
    "image_tree": Format(image_tree.ACCEPTS, image_tree.detect, image_tree.load),
    "semeion": Format(semeion.ACCEPTS, semeion.detect, semeion.load),
    "keras_named": Format(keras_named.ACCEPTS, keras_named.detect, keras_named.load),
}

ACCEPTED_KINDS: tuple[str, ...] = tuple(f.accepts for f in FORMATS.values())


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
    """Load a labelled (or unlabelled) image set; see :mod:`train.data` for the kinds.

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
        return conform(spec, _norm_size(image_size), _norm_colour(colour))
    size = _norm_size(image_size)
    col = _norm_colour(colour)
    names = _norm_class_names(class_names, num_classes)
    request = Request(spec=os.fspath(spec), path=Path(os.fspath(spec)).expanduser(), split=_norm_split(split),
                      image_size=size, colour=col, class_names=names, group_column=group_column)
    if group_column is not None and not kaggle_csv.is_kaggle_csv(request.path):
        raise DataError(f"{request.spec}: group_column={group_column!r} applies to a Kaggle-style CSV (or a "
                        "folder holding train.csv / test.csv) only; give other sources' groups in a side file")
    fmt = next((f for f in FORMATS.values() if f.detect(request)), None)
    if fmt is None:
        raise _unknown(request)
    return conform(fmt.load(request), size, col)


def _unknown(request: Request) -> DataError:
    accepted = "Accepted: " + "; ".join(f"({i}) {k}" for i, k in enumerate(ACCEPTED_KINDS, 1)) + "."
    if request.path.exists():
        return DataError(f"{request.path}: not a data file this loader knows.\n" + accepted)
    suggestion = keras_named.close_name(request.spec)
    hint = f" Did you mean '{suggestion}'?" if suggestion else ""
    return DataError(f"{request.spec}: no such file or folder, and not a known dataset name.{hint}\n" + accepted)


def _norm_split(split: str | None) -> str:
    if split is None:
        return "train"
    key = str(split).strip().lower()
    if key not in SPLIT_ALIASES:
        raise DataError(f"unknown split {split!r}; use 'train', 'test' or 'val'")
    return SPLIT_ALIASES[key]


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

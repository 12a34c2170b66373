"""Kaggle files out: a digit-recognizer CSV of a Dataset, and a submission CSV of predictions."""
from __future__ import annotations

import csv
import gzip
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from train.data.dataset import DataError, Dataset

__all__ = ["write_kaggle_csv", "write_kaggle_submission"]


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

"""Stratified splits, folds and samples of a labelled Dataset (scikit-learn, imported when called).

Each keeps the classes' shares and the source order within a part; ``seed`` makes it repeatable.
"""
from __future__ import annotations

import numpy as np

from train.data.dataset import DataError, Dataset

__all__ = ["kfold_indices", "stratified_sample", "stratified_split"]


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

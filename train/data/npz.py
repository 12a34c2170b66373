"""``.npz`` archives: Keras' ``mnist.npz`` layout (``x_train, y_train, x_test, y_test``) or ``x, y``.

Optional keys: ``class_names``, and ``ids`` / ``groups`` (``ids_<split>`` / ``groups_<split>`` in
the split layout). Nothing is unpickled: object arrays are refused.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from train.data.dataset import SPLIT_ALIASES, DataError, Dataset, Request, images_array, labels_array

__all__ = ["ACCEPTS", "detect", "load", "read_npz"]

ACCEPTS = "a .npz with x_train, y_train, x_test, y_test (Keras layout) or x, y"


def detect(request: Request) -> bool:
    return request.path.is_file() and request.path.name.lower().endswith(".npz")


def load(request: Request) -> Dataset:
    return read_npz(request.path, request.split, request.class_names)


def read_npz(path: Path, split: str, names: list[str] | None, source: str | None = None) -> Dataset:
    """The ``split`` of an .npz (a one-set ``x, y`` archive has only "train"); ``source`` names it."""
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

        x_key, y_key, label_keys, extra = _layout(path, keys, split)
        x = images_array(get(x_key), f"{path}[{x_key}]")
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
                arrays = [get(k) if k != y_key else y_raw for k in label_keys]
                class_names = [str(i) for i in range(_largest_label(arrays) + 1)]
            y = labels_array(y_raw, len(x), f"{path}[{y_key}]", len(class_names))
        class_names = class_names or []
        optional = {k: (get(v) if v in keys else None) for k, v in extra.items()}
    if optional["groups"] is not None:
        optional["groups"] = optional["groups"].astype(str)
    return Dataset(x=x, y=y, class_names=class_names, source=source or str(path), **optional)


def _layout(path: Path, keys: set[str], split: str) -> tuple[str, str, list[str], dict[str, str]]:
    """-> (images key, labels key, every split's labels key, {"ids": key, "groups": key}) for ``split``."""
    split_keys = {}
    for k in keys:
        if k.startswith("x_") and SPLIT_ALIASES.get(k[2:].lower()):
            split_keys[SPLIT_ALIASES[k[2:].lower()]] = k[2:]
    if split_keys:
        if split not in split_keys:
            raise DataError(f"{path}: no '{split}' split (keys: {', '.join(sorted(keys))})")
        sfx = split_keys[split]
        label_keys = [f"y_{s}" for s in split_keys.values() if f"y_{s}" in keys]
        return f"x_{sfx}", f"y_{sfx}", label_keys, {"ids": f"ids_{sfx}", "groups": f"groups_{sfx}"}
    if "x" in keys:
        if split != "train":
            raise DataError(f"{path}: holds one set (x, y) with no '{split}' split; load it with "
                            "split='train' and carve splits with stratified_split()")
        return "x", "y", ["y"] if "y" in keys else [], {"ids": "ids", "groups": "groups"}
    raise DataError(f"{path}: expected keys x_train, y_train, x_test, y_test (Keras layout) or "
                    f"x, y; found {', '.join(sorted(keys)) or 'none'}")


def _largest_label(arrays: list[np.ndarray]) -> int:
    """The largest label in any split's labels (so every split gets the same class set), at least 0."""
    top = -1
    for arr in arrays:
        if arr.size and (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
            top = max(top, int(np.nanmax(arr)) if np.isfinite(arr).any() else -1)
    return max(top, 0)

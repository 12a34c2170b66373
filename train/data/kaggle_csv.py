"""Kaggle "digit-recognizer" CSVs: ``label,pixel0..pixel783`` (or the unlabelled ``pixel0..``).

A file (``.csv`` or ``.csv.gz``), or a folder holding ``train.csv`` / ``test.csv`` (any split
alias). Every row must have the header's column count; a bad cell is named by line and column.
An optional non-pixel column (``group`` by default, see ``group_column``) becomes ``Dataset.groups``.
"""
from __future__ import annotations

import csv
import io
import math
import re
from pathlib import Path

import numpy as np

from train.data.dataset import MNIST_CLASSES, SPLIT_ALIASES, DataError, Dataset, Request, labels_array, read_text
from train.data.idx import has_idx_files

__all__ = ["ACCEPTS", "detect", "is_kaggle_csv", "load", "load_csv_folder", "read_kaggle_csv"]

ACCEPTS = ("a Kaggle digit-recognizer CSV (header label,pixel0..pixel783 or pixel0..pixel783; .csv or "
           ".csv.gz), or a folder holding train.csv / test.csv")

_PIXEL_RE = re.compile(r"pixel(\d+)")
_SUFFIXES = (".csv", ".csv.gz")


def is_kaggle_csv(path: Path) -> bool:
    """Whether ``path`` is read as a Kaggle CSV: a ``.csv[.gz]`` name, or a folder of split CSVs that
    holds no IDX files (a folder with both is an IDX folder)."""
    if path.is_dir():
        return not has_idx_files(path) and bool(_split_files(path))
    return path.name.lower().endswith(_SUFFIXES)


def detect(request: Request) -> bool:
    return request.path.exists() and is_kaggle_csv(request.path)


def load(request: Request) -> Dataset:
    if request.path.is_dir():
        return load_csv_folder(request.path, request.split, request.class_names, request.group_column)
    return read_kaggle_csv(request.path, request.class_names, request.group_column)


def load_csv_folder(folder: Path, split: str, names: list[str] | None, group_column: str | None = None) -> Dataset:
    """The ``<split>.csv`` of a folder of split CSVs."""
    files = _split_files(folder)
    if split not in files:
        raise DataError(f"{folder}: no {split}.csv here (found: {', '.join(sorted(p.name for p in files.values()))})")
    return read_kaggle_csv(files[split], names, group_column)


def read_kaggle_csv(path: Path, names: list[str] | None, group_column: str | None = None) -> Dataset:
    """One Kaggle CSV; unlabelled rows get ``ids`` 1..N (Kaggle's ImageId)."""
    text = read_text(path, "UTF-8 text", strip_bom=True)
    lines = text.split("\n")
    header = next(csv.reader([lines[0].rstrip("\r")]))
    label_col, pixel_cols, group_col, side = _columns(path, header, group_column)
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
    values = _numeric(path, text, body, header, numeric_cols, group_col)
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
        y = labels_array(labels, len(labels), str(path), len(class_names),
                         index_to_place=lambda i: f"line {i + 2}, column 'label'")
    groups = None
    if group_col is not None:
        reader = csv.reader(line.rstrip("\r") for line in body)
        groups = np.array([row[group_col].strip() for row in reader], dtype=str)
    x = pixels.astype(np.uint8).reshape(-1, side, side, 1)
    ids = np.arange(1, len(x) + 1, dtype=np.int64) if y is None else None
    return Dataset(x=x, y=y, class_names=class_names, source=str(path), ids=ids, groups=groups)


def _split_files(folder: Path) -> dict[str, Path]:
    found = {}
    for p in folder.iterdir():
        n = p.name.lower()
        for suffix in _SUFFIXES:
            if n.endswith(suffix) and n[: -len(suffix)] in SPLIT_ALIASES and p.is_file():
                found[SPLIT_ALIASES[n[: -len(suffix)]]] = p
    return found


def _check_group_column(path: Path, names: list[str], group_column: str | None) -> None:
    if group_column is not None and (group_column == "label" or _PIXEL_RE.fullmatch(group_column)):
        raise DataError(f"{path}: group_column={group_column!r} must name a column other than "
                        "'label' and the pixel columns")
    if group_column is not None and group_column not in names:
        pixels = [n for n in names if _PIXEL_RE.fullmatch(n)]
        shown = [repr(n) for n in names if not _PIXEL_RE.fullmatch(n)]
        if pixels:
            shown.append(f"{pixels[0]}..{pixels[-1]} ({len(pixels)} pixel columns)")
        raise DataError(f"{path}: line 1: no column {group_column!r}; the columns are {', '.join(shown)}")


def _columns(path: Path, header: list[str], group_column: str | None = None
             ) -> tuple[int | None, np.ndarray, int | None, int]:
    """-> (label column, pixel columns ordered pixel0..pixelN-1, group column, image side).

    The group column is ``group_column`` (which must exist) or, by default, ``group`` if present.
    """
    _check_group_column(path, [h.strip() for h in header], group_column)
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


def _header_desc(header: list[str]) -> str:
    if len(header) <= 4:
        return ",".join(header)
    return f"{header[0]},{header[1]},...,{header[-1]}"


def _numeric(path: Path, text: str, body: list[str], header: list[str], numeric_cols: list[int],
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
        _find_bad_field(path, body, header, numeric_cols)
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


def _find_bad_field(path: Path, body: list[str], header: list[str], numeric_cols: list[int]) -> None:
    for i, row in enumerate(csv.reader(line.rstrip("\r") for line in body)):
        for c in numeric_cols:
            cell = row[c].strip()
            try:
                float(cell)
            except ValueError as e:
                problem = f"{cell!r} is not a number" if cell else "the value is empty"
                raise DataError(f"{path}: line {i + 2}, column '{header[c]}': {problem}") from e

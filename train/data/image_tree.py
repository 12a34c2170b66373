"""Image folders, on disk or in a ``.zip``: one sub-folder per class, optionally under split folders.

``<class>/<image>`` or ``<split>/<class>/<image>`` (``train/``, ``test/``, ``val/`` and their
aliases); single wrapper folders around the whole tree (``cifar10-jpeg/``) are descended through.
Classes are in folder-name order, or in the order of a ``labels.txt`` beside the class folders.
Hidden files, ``__MACOSX`` and the like are ignored; other non-image files in class folders are
skipped with a warning. Images are decoded with OpenCV (Pillow for what it cannot read) and made
the asked-for colour and size, else the first image's.
"""
from __future__ import annotations

import io
import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, NamedTuple

import cv2
import numpy as np

from train.data.dataset import SPLIT_ALIASES, DataError, Dataset, Request, resize_image

logger = logging.getLogger(__name__)

__all__ = ["ACCEPTS", "IMAGE_EXTENSIONS", "detect", "load"]

ACCEPTS = "an image folder with one sub-folder per class (optionally under train/ and test/), or a .zip of one"

IMAGE_EXTENSIONS = frozenset({
    ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp",
    ".pgm", ".ppm", ".pbm", ".pnm", ".jp2",
})
_IGNORED_NAMES = frozenset({"__MACOSX", "Thumbs.db", "desktop.ini"})


def detect(request: Request) -> bool:
    """Any folder (the formats before this one in the table claim IDX and CSV folders), or a .zip."""
    path = request.path
    return path.is_dir() or (path.is_file() and path.name.lower().endswith(".zip"))


def load(request: Request) -> Dataset:
    path, args = request.path, (request.split, request.image_size, request.colour, request.class_names)
    if path.is_dir():
        return _load_tree(_dir_tree(path), *args)
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: not a readable zip file ({e})") from e
    with archive:
        return _load_tree(_zip_tree(path, archive), *args)


@dataclass
class _Tree:
    """A directory tree of files, from disk or a zip: relative POSIX paths and a byte reader."""

    files: list[str]
    dirs: set[str]
    read: Callable[[str], bytes]
    where: Callable[[str], str]
    root: str


class _Layout(NamedTuple):
    prefix: str            # the wrapper folders above the tree ("" or "cifar10-jpeg/")
    base: str              # the folder holding the chosen split's class folders
    present: list[str]     # class folders under ``base``
    all_classes: list[str]  # class folders in every split
    has_splits: bool


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
                and next(iter(tops)).lower() not in SPLIT_ALIASES):
            prefix += next(iter(tops)) + "/"
            continue
        return prefix


def _subdirs(tree: _Tree, prefix: str) -> list[str]:
    depth = prefix.count("/")
    return sorted(d[len(prefix):] for d in tree.dirs
                  if d.startswith(prefix) and d.count("/") == depth and d != prefix.rstrip("/"))


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _loose_images(tree: _Tree, base: str) -> list[str]:
    """Images directly in ``base`` (not inside a class folder)."""
    return [f for f in tree.files if f.startswith(base) and "/" not in f[len(base):] and _is_image(f)]


def _layout(tree: _Tree, split: str) -> _Layout:
    """Where the class folders of ``split`` are; refuses trees that are not ``[<split>/]<class>/<image>``."""
    if not tree.files and not tree.dirs:
        raise DataError(f"{tree.root}: no images (the folder is empty)")
    prefix = _strip_wrapper(tree)
    top = _subdirs(tree, prefix)
    split_dirs = {d: SPLIT_ALIASES[d.lower()] for d in top if d.lower() in SPLIT_ALIASES}
    named = _read_labels(tree, f"{prefix}labels.txt")
    if split_dirs and named is not None and set(top) <= set(named):
        split_dirs = {}  # a labels.txt naming them: class folders called 'valid', 'test', ... (an export)
    loose = _loose_images(tree, prefix)
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
        loose = _loose_images(tree, base)
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
    return _Layout(prefix, base, present, all_classes, bool(split_dirs))


def _class_names(tree: _Tree, layout: _Layout, names: list[str] | None) -> list[str]:
    if names is None:
        names = _labels_file(tree, layout)
    if names is None:
        return list(layout.all_classes)
    unknown = [c for c in layout.all_classes if c not in names]
    if unknown:
        raise DataError(f"{tree.where(layout.base + unknown[0])}: class folder '{unknown[0]}' is not one of "
                        f"class_names {names}")
    return list(names)


def _read_labels(tree: _Tree, rel: str) -> list[str] | None:
    if rel not in tree.files:
        return None
    names = [line.strip() for line in tree.read(rel).decode("utf-8", "replace").splitlines() if line.strip()]
    return names or None


def _labels_file(tree: _Tree, layout: _Layout) -> list[str] | None:
    """The class order a ``labels.txt`` beside the class folders (or at the tree's top) gives, one name
    per line (what ``FeedbackStore.export_folder`` writes: the model's index order); None without
    one, or (with a warning) when it does not name every class folder (another tool's format)."""
    for rel in dict.fromkeys((f"{layout.base}labels.txt", f"{layout.prefix}labels.txt")):
        names = _read_labels(tree, rel)
        if names is None:
            continue
        missing = [c for c in layout.all_classes if c not in names]
        if missing:
            logger.warning("%s: does not name the class folder(s) %s; ignored (classes in folder-name order)",
                           tree.where(rel), ", ".join(missing[:5]))
            return None
        return names
    return None


def _items(tree: _Tree, layout: _Layout, class_names: list[str]) -> list[tuple[str, int]]:
    """(image path, class index) of every image in the chosen split's class folders."""
    index = {c: i for i, c in enumerate(class_names)}
    base = layout.base
    by_class: dict[str, list[str]] = {cls: [] for cls in layout.present}
    for f in tree.files:
        if f.startswith(base) and "/" in f[len(base):]:
            by_class.setdefault(f[len(base):].split("/", 1)[0], []).append(f)
    items: list[tuple[str, int]] = []
    skipped: list[str] = []
    for cls in layout.present:
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
    return items


def _load_tree(tree: _Tree, split: str, size: tuple[int, int] | None, colour: str | None,
               names: list[str] | None) -> Dataset:
    layout = _layout(tree, split)
    class_names = _class_names(tree, layout, names)
    items = _items(tree, layout, class_names)
    first = _decode_image(tree.read(items[0][0]), tree.where(items[0][0]))
    colour = colour or ("rgb" if first.ndim == 3 else "grey")
    size = size or first.shape[:2]
    channels = 3 if colour == "rgb" else 1
    x = np.empty((len(items), size[0], size[1], channels), np.uint8)
    for i, (rel, _) in enumerate(items):
        img = first if i == 0 else _decode_image(tree.read(rel), tree.where(rel))
        x[i] = resize_image(_to_colour(img, colour), size).reshape(x.shape[1:])
    y = np.array([label for _, label in items], dtype=np.int64)
    ids = np.array([rel[len(layout.prefix):] for rel, _ in items], dtype=str)
    source = f"{tree.root} [{split}]" if layout.has_splits else tree.root
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

"""A feedback store's labelled samples as an image folder, one sub-folder per label, that
``train.data.load_dataset`` reads (``train.train --data <store>`` trains on such a snapshot)."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import cv2

from train.loop.images import encode_png
from train.loop.samples import FeedbackError, Sample

if TYPE_CHECKING:
    from train.loop.store import FeedbackStore

logger = logging.getLogger(__name__)

MIN_PER_CLASS = 2  # what a stratified validation split needs of each class


def too_few_labels(labels: list[str], counts: dict[str, int]) -> list[str]:
    """``"<label> (<n>)"`` for each class with fewer than :data:`MIN_PER_CLASS` labelled samples."""
    return [f"{c} ({counts.get(c, 0)})" for c in labels if counts.get(c, 0) < MIN_PER_CLASS]


def export_folder(store: "FeedbackStore", out_dir: str | os.PathLike) -> dict[str, int]:
    """Write the labelled samples as ``out_dir/<label>/<id>.png|jpg`` plus ``labels.txt`` (the label
    order), readable by ``train.data.load_dataset``: the model input when sent (its file as received;
    a legacy colour one, stored with its channels swapped, re-encoded as a standard PNG), else the
    frame, cropped to the sample's region when it has one (a region box that does not fit the
    stored frame leaves the sample out, with a warning). ``out_dir`` must be new or empty. Returns
    the count per label."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FeedbackError(f"{out}: not empty; export into a new folder")
    samples = store.labelled()
    for label in {s.label for s in samples}:
        if label in (".", "..") or label.startswith(".") or any(c in label for c in "/\\\0"):
            raise FeedbackError(f"label {label!r} cannot be a folder name (no '/', '\\', leading '.'); "
                                "load the labelled samples with FeedbackStore.labelled() instead")
    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    left_out = []
    for s in samples:
        try:
            name, data = export_file(s)
        except FeedbackError as e:
            left_out.append(str(e))
            continue
        dest = out / s.label / name
        dest.parent.mkdir(exist_ok=True)
        dest.write_bytes(data)
        counts[s.label] = counts.get(s.label, 0) + 1
    if left_out:
        logger.warning("%s: %d labelled sample(s) left out of the export: %s", store.path, len(left_out),
                       "; ".join(left_out))
    (out / "labels.txt").write_text("".join(f"{x}\n" for x in store.labels()))
    return counts


def export_file(s: Sample) -> tuple[str, bytes]:
    """A labelled sample's exported file: ``(name, bytes)``, a standard image (see :func:`export_folder`)."""
    if s.input_path is not None:
        if s.input_colour is None:  # legacy: RGB bytes in OpenCV's BGR slots
            img = s.model_input()
            if img.ndim == 3:
                return f"{s.id}.png", encode_png(cv2.cvtColor(img[..., :3], cv2.COLOR_RGB2BGR))
        return f"{s.id}{s.input_path.suffix}", s.input_path.read_bytes()
    if s.region_box is None:
        return f"{s.id}{s.image_path.suffix}", s.image_path.read_bytes()
    return f"{s.id}.png", encode_png(s.region_image())

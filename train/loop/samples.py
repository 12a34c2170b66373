"""What a feedback store holds: one :class:`Sample` per uncertain frame, and the error it raises.

A sample's files are read lazily: :meth:`Sample.image` is the frame the device sent (as OpenCV
decodes it), :meth:`Sample.model_input` what its preprocessing fed the model, when the device sent it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from train.errors import InputError


class FeedbackError(InputError):
    """A payload, label, id or CSV the store cannot take; the message names the field or row."""


def read_image(path: Path) -> np.ndarray:
    """An image file as OpenCV decodes it (channels unchanged); FeedbackError if unreadable."""
    try:
        data = np.fromfile(path, np.uint8)
    except OSError as e:
        raise FeedbackError(f"{path}: cannot read ({e.strerror})") from e
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise FeedbackError(f"{path}: not a readable image")
    return img


@dataclass
class Sample:
    """One stored sample (a row of ``index.sqlite`` with absolute file paths)."""

    id: int
    device: str
    run_id: str
    seq: int
    frame_id: int
    ts: float
    received: float
    model_name: str
    model_version: str
    reasons: list[str]
    top_k: list[dict]
    scores: list[float]
    predicted: str | None
    score: float | None
    label: str | None
    status: str
    image_path: Path
    input_path: Path | None

    def model_input(self) -> np.ndarray | None:
        """What the model saw, as uint8 (HxW for a grey model, RGB for a colour one), or None when the
        device did not send it."""
        return read_image(self.input_path) if self.input_path else None

    def image(self) -> np.ndarray:
        """The frame as OpenCV decodes it (BGR, or HxW grey)."""
        return read_image(self.image_path)

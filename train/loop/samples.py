"""What a feedback store holds: one :class:`Sample` per uncertain frame, and the error it raises.

A sample's files are read lazily: :meth:`Sample.image` is the frame the device sent (as OpenCV
decodes it), :meth:`Sample.model_input` what its preprocessing fed the model, when the device sent it,
and :meth:`Sample.region_image` the part of the frame a region sample was classified from.
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
    region: str | None = None                              # the named region classified (None: the frame)
    region_box: tuple[int, int, int, int] | None = None    # its [x, y, w, h], pixels of the captured frame
    input_colour: str | None = None                        # grey | rgb; None: no model input, or a legacy one

    def model_input(self) -> np.ndarray | None:
        """What the model saw, as uint8 (HxW for a grey model, RGB HxWx3 for a colour one), or None when
        the device did not send it.

        The file is a standard image (BGR in OpenCV's order), so a colour one is turned to RGB. A
        legacy one (stored before ``model_input`` had a ``colour``: ``input_colour`` None) held the
        RGB bytes in OpenCV's BGR slots, so it decodes to RGB as it is."""
        if self.input_path is None:
            return None
        img = read_image(self.input_path)
        if img.ndim == 3 and img.shape[2] == 3 and self.input_colour is not None:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        return img

    def image(self) -> np.ndarray:
        """The frame as OpenCV decodes it (BGR, or HxW grey)."""
        return read_image(self.image_path)

    def region_image(self) -> np.ndarray:
        """The frame cropped to ``region_box`` (the whole frame for a sample without a region), BGR or
        HxW grey. FeedbackError when the box reaches outside the stored frame: the box is in pixels of
        the captured frame, so it does not fit a frame the device sent downscaled."""
        frame = self.image()
        if self.region_box is None:
            return frame
        x, y, w, h = self.region_box
        if x + w > frame.shape[1] or y + h > frame.shape[0]:
            raise FeedbackError(f"sample {self.id}: region {self.region!r} box {list(self.region_box)} reaches "
                                f"outside its {frame.shape[1]}x{frame.shape[0]} frame (sent downscaled?)")
        return frame[y:y + h, x:x + w]

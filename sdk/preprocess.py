"""Frame -> input tensor, driven by the bundle's manifest (no preprocessing constant here).

``plain``: region of interest, colour conversion, resize (stretch / centre crop / letterbox),
ink polarity, then ``pixel * scale + offset`` and the input quantization, folded into one
256-entry lookup table.

``digit``: what MNIST's makers did with scanned forms, for a camera looking at a dark digit
on light paper: estimate the paper's local brightness (so uneven light does not matter),
threshold the ink relative to it, keep the largest ink blob (and pieces next to it), crop to
it, fit it in a 20x20 box (aspect kept, anti-aliased), and centre it by its centre of mass in
the 28x28 input, light on dark.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from .bundle import InputSpec, Normalization

logger = logging.getLogger(__name__)

MODES = ("auto", "plain", "digit")
INVERT = ("auto", "never", "always")
RESIZE_MODES = ("stretch", "centre_crop", "letterbox")


@dataclass
class DigitParams:
    """Tunables of the digit finder (defaults fit a hand-held sheet of paper)."""

    work_side: int = 320          # the digit's region is cut at this longer side of the frame
    coarse_side: int = 160        # the blobs are found on the frame reduced to this longer side
    min_contrast: float = 0.22    # ink must be this much darker than the local paper
    min_area_frac: float = 0.0004  # blobs smaller than this share of the frame are noise
    box_frac: float = 20 / 28     # MNIST: the digit fits a 20x20 box in 28x28


def _lut(normalization: Normalization, detail: dict) -> np.ndarray:
    """pixel (0..255) -> model input value, quantized to the input dtype."""
    from .classify import quantize

    real = np.arange(256, dtype=np.float64) * normalization.scale + normalization.offset
    return quantize(real, detail)


def roi_box(shape: Sequence[int], roi: Sequence[float]) -> tuple[int, int, int, int]:
    """``roi`` ``(x, y, w, h)`` as a pixel box ``(x, y, w, h)`` inside a frame of ``shape`` (h, w, ...).

    Fractions of the frame when all four values are within 0..1, else pixels; a pixel box reaching
    past the frame is clipped to it. An empty result raises ``ValueError``.
    """
    h, w = int(shape[0]), int(shape[1])
    if all(0 <= v <= 1 for v in roi):
        x0, y0 = int(round(roi[0] * w)), int(round(roi[1] * h))
        x1, y1 = int(round((roi[0] + roi[2]) * w)), int(round((roi[1] + roi[3]) * h))
    else:
        x0, y0 = int(roi[0]), int(roi[1])
        x1, y1 = x0 + int(roi[2]), y0 + int(roi[3])
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"region of interest {tuple(roi)} is empty for a {w}x{h} frame")
    return x0, y0, x1 - x0, y1 - y0


def crop_roi(frame: np.ndarray, roi: Sequence[float] | None) -> np.ndarray:
    """The region ``roi`` (see :func:`roi_box`) of ``frame``; the whole frame for None."""
    if roi is None:
        return frame
    x, y, w, h = roi_box(frame.shape, roi)
    return frame[y:y + h, x:x + w]


def to_grey(frame: np.ndarray) -> np.ndarray:
    if frame.ndim == 2:
        return frame
    if frame.shape[2] == 1:
        return frame[..., 0]
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2GRAY)
    return cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)


def to_rgb(frame: np.ndarray) -> np.ndarray:
    if frame.ndim == 2 or frame.shape[2] == 1:
        return cv2.cvtColor(frame.reshape(frame.shape[:2]), cv2.COLOR_GRAY2RGB)
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


def area_resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``img`` at ``size`` (w, h): pixel-area averaging when shrinking, bilinear when growing.

    OpenCV's area resize is fast for a factor of exactly 2 and slow for others (0.4 ms for a
    640x480 grey frame to 28x28), so a large reduction first halves the image while it stays at
    least 1.5 times the target; the result differs from one area resize by less than 1/255 on
    average (a halving is an exact 2x2 area average).
    """
    w, h = size
    ih, iw = img.shape[:2]
    if iw < w or ih < h:
        return cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
    while iw >= 3 * w and ih >= 3 * h:
        iw, ih = iw // 2, ih // 2
        img = cv2.resize(img[:ih * 2, :iw * 2], (iw, ih), interpolation=cv2.INTER_AREA)
    if (iw, ih) == (w, h):
        return img
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)


def resize(img: np.ndarray, size: tuple[int, int], mode: str) -> np.ndarray:
    """Fit ``img`` to ``size`` (w, h): stretch, centre_crop or letterbox (zero padding)."""
    w, h = size
    ih, iw = img.shape[:2]
    if mode == "stretch":
        return area_resize(img, (w, h))
    if mode == "centre_crop":
        s = min(iw / w, ih / h)
        cw, ch = max(1, int(round(w * s))), max(1, int(round(h * s)))
        x0, y0 = (iw - cw) // 2, (ih - ch) // 2
        return area_resize(img[y0:y0 + ch, x0:x0 + cw], (w, h))
    if mode == "letterbox":
        s = min(w / iw, h / ih)
        nw, nh = max(1, int(round(iw * s))), max(1, int(round(ih * s)))
        out = np.zeros((h, w) + img.shape[2:], dtype=img.dtype)
        x0, y0 = (w - nw) // 2, (h - nh) // 2
        out[y0:y0 + nh, x0:x0 + nw] = area_resize(img, (nw, nh))
        return out
    raise ValueError(f"unknown resize mode {mode!r}; valid: {', '.join(RESIZE_MODES)}")


def _paper(grey: np.ndarray) -> np.ndarray:
    """The paper's local brightness under ``grey``: the local maximum over a window wider than a
    pen stroke, computed on a 4x smaller image and smoothed back up (uneven light follows it)."""
    h, w = grey.shape
    small = area_resize(grey, (max(1, w // 4), max(1, h // 4)))
    k = max(5, (max(small.shape) // 10) | 1)
    bg = cv2.dilate(small, cv2.getStructuringElement(cv2.MORPH_RECT, (k, k)))
    bg = cv2.blur(bg, (k, k))
    return cv2.resize(bg, (w, h), interpolation=cv2.INTER_LINEAR)


def _ink(grey: np.ndarray, paper: np.ndarray) -> np.ndarray:
    paper = cv2.max(paper, grey)  # the paper is never darker than what is on it
    return cv2.divide(cv2.subtract(paper, grey), cv2.max(paper, 1), scale=255.0)  # (paper - grey) / paper, uint8


def ink_map(grey: np.ndarray) -> np.ndarray:
    """How much darker each pixel is than the paper around it, 0..255 (uneven light removed)."""
    return _ink(grey, _paper(grey))


def _select_blobs(mask: np.ndarray, params: DigitParams) -> tuple[np.ndarray, tuple[int, int, int, int]] | None:
    """The digit's blobs in ``mask``: the largest one away from the frame edge and the pieces next to
    it (a broken stroke). Returns their mask (uint8 0/1) cropped to their box ``(x0, y0, x1, y1)``."""
    n, labels, stats, _ = cv2.connectedComponentsWithStatsWithAlgorithm(mask, 8, cv2.CV_16U, cv2.CCL_DEFAULT)
    if n <= 1:
        return None
    wh, ww = mask.shape
    min_area = max(6, params.min_area_frac * wh * ww)
    x, y, bw, bh, area = (stats[1:, i] for i in range(5))
    big = area >= min_area
    inner = big & (x > 0) & (y > 0) & (x + bw < ww) & (y + bh < wh)
    cands = inner if inner.any() else big  # blobs touching the frame edge (paper edge, shadow) only as a last resort
    if not cands.any():
        return None
    main = int(np.argmax(np.where(cands, area, -1)))
    m = 0.3 * max(bw[main], bh[main])
    keep = cands & (x < x[main] + bw[main] + m) & (x + bw > x[main] - m) & (y < y[main] + bh[main] + m) & (y + bh > y[main] - m)
    x0, y0 = int(x[keep].min()), int(y[keep].min())
    x1, y1 = int((x + bw)[keep].max()), int((y + bh)[keep].max())
    lut = np.zeros(n, np.uint8)
    lut[1:][keep] = 1
    return lut[labels[y0:y1, x0:x1]], (x0, y0, x1, y1)


def _normalise_ink(ink: np.ndarray, sel: np.ndarray) -> np.ndarray:
    """The selected ink (with the anti-aliased rim of its strokes), scaled so its 90th percentile is 255."""
    sel = cv2.dilate(sel, np.ones((3, 3), np.uint8))
    crop = cv2.multiply(ink, sel)
    values = crop[sel > 0]
    peak = float(np.partition(values, int(0.9 * (values.size - 1)))[int(0.9 * (values.size - 1))]) if values.size else 1.0
    return cv2.convertScaleAbs(crop, alpha=255.0 / max(peak, 1.0))


def find_digit(grey: np.ndarray, params: DigitParams = DigitParams()) -> tuple[np.ndarray, tuple[int, int, int, int]] | None:
    """The ink of the digit (light on dark, 0..255) cropped to it, and its box ``(x, y, w, h)``
    in ``grey``'s coordinates; None when the frame holds no ink.

    Coarse to fine: the blobs are found on a frame reduced to ``coarse_side``, then only their
    region is cut from ``grey`` at ``work_side`` and thresholded there, against the paper level and
    the threshold of the coarse pass; the coarse selection, widened by a pixel, gates the fine ink.
    """
    h, w = grey.shape
    f = min(1.0, params.work_side / max(h, w))
    fc = min(f, params.coarse_side / max(h, w))
    coarse = area_resize(grey, (max(1, round(w * fc)), max(1, round(h * fc))))
    paper = _paper(coarse)
    ink = _ink(coarse, paper)
    otsu, _ = cv2.threshold(ink, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    t = max(float(otsu), params.min_contrast * 255)
    _, mask = cv2.threshold(ink, t, 1, cv2.THRESH_BINARY)
    if fc == f:  # one pass: the coarse frame is the work frame
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((2, 2), np.uint8))
    found = _select_blobs(mask, params)
    if found is None:
        return None
    sel, (x0, y0, x1, y1) = found
    if fc == f:
        return _normalise_ink(ink[y0:y1, x0:x1], sel), _box(x0, y0, x1, y1, f)
    ch, cw = coarse.shape
    x0, y0, x1, y1 = max(0, x0 - 1), max(0, y0 - 1), min(cw, x1 + 1), min(ch, y1 + 1)  # a pixel of margin
    gate = np.zeros((y1 - y0, x1 - x0), np.uint8)
    found_box = found[1]
    gate[found_box[1] - y0:found_box[3] - y0, found_box[0] - x0:found_box[2] - x0] = sel
    gate = cv2.dilate(gate, np.ones((3, 3), np.uint8))
    X0, Y0 = int(x0 / fc), int(y0 / fc)
    X1, Y1 = min(w, int(np.ceil(x1 / fc))), min(h, int(np.ceil(y1 / fc)))
    size = (max(1, round((X1 - X0) * f)), max(1, round((Y1 - Y0) * f)))
    fine = area_resize(grey[Y0:Y1, X0:X1], size)
    fine_ink = _ink(fine, cv2.resize(paper[y0:y1, x0:x1], size, interpolation=cv2.INTER_LINEAR))
    _, fine_mask = cv2.threshold(fine_ink, t, 1, cv2.THRESH_BINARY)
    fine_mask = cv2.morphologyEx(fine_mask, cv2.MORPH_OPEN, np.ones((2, 2), np.uint8))
    fine_mask = cv2.bitwise_and(fine_mask, cv2.resize(gate, size, interpolation=cv2.INTER_NEAREST))
    bx, by, bw, bh = cv2.boundingRect(fine_mask)
    if bw == 0 or bh == 0:
        return None
    crop = _normalise_ink(fine_ink[by:by + bh, bx:bx + bw], fine_mask[by:by + bh, bx:bx + bw])
    return crop, _box(X0 * f + bx, Y0 * f + by, X0 * f + bx + bw, Y0 * f + by + bh, f)


def _box(x0: float, y0: float, x1: float, y1: float, f: float) -> tuple[int, int, int, int]:
    """A box ``(x0, y0, x1, y1)`` of the work frame (scale ``f``) as ``(x, y, w, h)`` in the frame's pixels."""
    return int(x0 / f), int(y0 / f), int((x1 - x0) / f), int((y1 - y0) / f)


def centre_digit(crop: np.ndarray, size: tuple[int, int], box_frac: float = 20 / 28) -> np.ndarray:
    """Fit the ink in a ``box_frac`` box (aspect kept) and centre it by mass in ``size`` (w, h)."""
    w, h = size
    ch, cw = crop.shape
    box = box_frac * min(w, h)
    s = box / max(ch, cw)
    nw, nh = max(1, int(round(cw * s))), max(1, int(round(ch * s)))
    patch = cv2.resize(crop, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    out = np.zeros((h, w), np.uint8)
    m = cv2.moments(patch)
    if m["m00"] > 0:
        cx, cy = m["m10"] / m["m00"], m["m01"] / m["m00"]
    else:
        cx, cy = nw / 2, nh / 2
    x0 = int(round(w / 2 - cx))
    y0 = int(round(h / 2 - cy))
    x0, y0 = min(max(x0, 0), w - nw), min(max(y0, 0), h - nh)
    out[y0:y0 + nh, x0:x0 + nw] = patch
    return out


class Preprocessor:
    """Callable: BGR (or grey) frame -> input tensor of the model, batch dimension included.

    ``spec`` is the manifest's input section, ``detail`` the interpreter's input details
    (dtype, quantization); ``mode`` auto takes ``spec.preprocess``. ``roi`` is (x, y, w, h)
    in fractions of the frame or in pixels (:func:`roi_box`). ``invert`` auto flips a frame whose
    polarity differs from the model's (judged from the median brightness). ``resize_mode`` auto
    takes ``spec.resize`` (what the model was trained with).
    """

    def __init__(self, spec: InputSpec, detail: dict, mode: str = "auto",
                 roi: Sequence[float] | None = None, invert: str = "auto",
                 digit: DigitParams | None = None, resize_mode: str = "auto"):
        if mode not in MODES:
            raise ValueError(f"unknown preprocess mode {mode!r}; valid: {', '.join(MODES)}")
        if invert not in INVERT:
            raise ValueError(f"unknown invert {invert!r}; valid: {', '.join(INVERT)}")
        if resize_mode not in ("auto",) + RESIZE_MODES:
            raise ValueError(f"unknown resize mode {resize_mode!r}; valid: auto, {', '.join(RESIZE_MODES)}")
        self.spec = spec
        self.mode = spec.preprocess if mode == "auto" else mode
        self.resize_mode = spec.resize if resize_mode == "auto" else resize_mode
        self.roi = tuple(roi) if roi is not None else None
        self.invert = invert
        self.digit = digit or DigitParams()
        self.shape = [int(v) for v in detail["shape"]]
        _, self.height, self.width = self.shape[:3]
        self.channels = self.shape[3] if len(self.shape) > 3 else 1
        self.lut = _lut(spec.normalization, detail)
        self.last_box: tuple[int, int, int, int] | None = None
        self.last_image: np.ndarray | None = None  # what the model saw, 0..255

    def image(self, frame: np.ndarray) -> np.ndarray:
        """The model-space picture (uint8, HxW or HxWx3) for a frame, before normalization."""
        frame = crop_roi(frame, self.roi)
        size = (self.width, self.height)
        if self.mode == "digit":
            found = find_digit(to_grey(frame), self.digit)
            if found is None:
                self.last_box = None
                img = np.zeros((self.height, self.width), np.uint8)
            else:
                crop, self.last_box = found
                img = centre_digit(crop, size, self.digit.box_frac)
            if self.spec.polarity == "dark_on_light":
                img = 255 - img
            if self.spec.colour == "rgb":
                img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
            return img
        img = to_grey(frame) if self.spec.colour == "grey" else to_rgb(frame)
        img = resize(img, size, self.resize_mode)
        if self._should_invert(img):
            img = 255 - img
        return img

    def _should_invert(self, img: np.ndarray) -> bool:
        if self.invert != "auto":
            return self.invert == "always"
        if self.spec.polarity == "any":
            return False
        light_ground = float(np.median(img)) > 127
        return light_ground if self.spec.polarity == "light_on_dark" else not light_ground

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        img = self.image(frame)
        self.last_image = img
        if img.ndim == 2 and self.channels == 3:
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
        return self.lut[img].reshape(self.shape)

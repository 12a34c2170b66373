"""Pick the frames the model is unsure of, to send back for labelling.

A frame is selected for low top-1 confidence, a small top-1/top-2 margin, a high normalised
entropy, or a random audit draw; selections are rate-limited (per minute and per hour) and
de-duplicated with a 64-bit perceptual hash (DCT of a 32x32 thumbnail, as imagehash's
``phash``, computed with OpenCV so a device needs no SciPy). The image is encoded PNG or
JPEG under a byte cap (lower JPEG quality, then smaller).

Capture mode (:class:`CaptureSchedule`, ``consider(..., capture=True)``): one frame every
``capture_every_s`` seconds is sent whatever the model says (reason ``capture``, with the frame's
uncertainty reasons when it has any), with or without a model; not rate-limited (the schedule
is its rate) but de-duplicated like every other sample, so a static scene is not sent again.
"""
from __future__ import annotations

import collections
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Callable

import cv2
import numpy as np

logger = logging.getLogger(__name__)

REASONS = ("low_confidence", "small_margin", "high_entropy", "random_audit")
#: A sample's reason in capture mode (a frame every ``capture_every_s``, with or without a model).
CAPTURE = "capture"


@dataclass
class SamplingPolicy:
    enabled: bool = True
    min_confidence: float = 0.6   # top-1 below this: low_confidence
    min_margin: float = 0.2       # top-1 minus top-2 below this: small_margin
    max_entropy: float = 0.5      # normalised entropy (0..1) above this: high_entropy
    audit_fraction: float = 0.0   # share of the other frames sent anyway (random_audit)
    per_minute: int = 10
    per_hour: int = 200
    dedup_distance: int = 6       # Hamming distance (of 64 bits) under which two frames are duplicates
    dedup_window: int = 256       # how many recent hashes are remembered
    image_format: str = "jpeg"    # png | jpeg
    jpeg_quality: int = 85
    max_side: int = 320           # longer side of the encoded image
    max_bytes: int = 48_000       # cap on the encoded image
    model_input_format: str = "png"     # png (lossless) | jpeg
    model_input_max_bytes: int = 200_000


@dataclass
class Uncertainty:
    confidence: float
    margin: float
    entropy: float

    def as_dict(self) -> dict:
        return {"confidence": self.confidence, "margin": self.margin, "entropy": self.entropy}


def measure(probs: np.ndarray) -> Uncertainty:
    p = np.clip(np.asarray(probs, dtype=np.float64), 0, None)
    total = p.sum()
    p = p / total if total > 0 else np.full_like(p, 1 / len(p))
    top = np.sort(p)[::-1]
    second = top[1] if len(top) > 1 else 0.0
    nz = p[p > 0]
    ent = float(-(nz * np.log(nz)).sum() / np.log(len(p))) if len(p) > 1 else 0.0
    return Uncertainty(float(top[0]), float(top[0] - second), min(1.0, max(0.0, ent)))


def reasons_for(u: Uncertainty, policy: SamplingPolicy) -> list[str]:
    out = []
    if u.confidence < policy.min_confidence:
        out.append("low_confidence")
    if u.margin < policy.min_margin:
        out.append("small_margin")
    if u.entropy > policy.max_entropy:
        out.append("high_entropy")
    return out


def phash(image: np.ndarray) -> int:
    """64-bit perceptual hash: sign of the 8x8 lowest DCT frequencies against their median."""
    grey = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    small = cv2.resize(grey, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[:8, :8]
    bits = (low > np.median(low)).flatten()
    return int(np.packbits(bits).view(">u8")[0])


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def encode_image(image: np.ndarray, fmt: str = "jpeg", max_bytes: int = 48_000, max_side: int = 320,
                 quality: int = 85) -> tuple[bytes, int, int]:
    """Encode under ``max_bytes``: ``(data, width, height)``. Raises ValueError if impossible."""
    if fmt not in ("png", "jpeg"):
        raise ValueError(f"unknown image format {fmt!r}; valid: png, jpeg")
    h, w = image.shape[:2]
    s = min(1.0, max_side / max(h, w))
    while True:
        img = image if s >= 1 else cv2.resize(image, (max(1, int(w * s)), max(1, int(h * s))), interpolation=cv2.INTER_AREA)
        qualities = [quality, 70, 50, 30] if fmt == "jpeg" else [0]  # PNG: one try, lossless
        for q in qualities:
            if fmt == "jpeg":
                ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, q])
            else:
                ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 6])
            if ok and buf.size <= max_bytes:
                return buf.tobytes(), img.shape[1], img.shape[0]
        if max(img.shape[:2]) <= 16:
            raise ValueError(f"cannot encode a frame under {max_bytes} bytes")
        s *= 0.7


def encode_model_input(image: np.ndarray, fmt: str = "png", max_bytes: int = 200_000) -> tuple[bytes, str] | None:
    """What the model saw (uint8 HxW grey or HxWx3 RGB, never resized) as a standard image file:
    ``(data, format)``. PNG is lossless; over ``max_bytes`` (or with ``fmt`` jpeg) JPEG at falling
    quality. None when not even JPEG at quality 30 fits."""
    if fmt not in ("png", "jpeg"):
        raise ValueError(f"unknown image format {fmt!r}; valid: png, jpeg")
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image  # files hold BGR for OpenCV
    if fmt == "png":
        ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 6])
        if ok and buf.size <= max_bytes:
            return buf.tobytes(), "png"
    for q in (95, 85, 70, 50, 30):
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, q])
        if ok and buf.size <= max_bytes:
            return buf.tobytes(), "jpeg"
    return None


class CaptureSchedule:
    """Which frames capture mode sends: ``due(t)`` for each frame's time ``t`` (seconds, any clock
    that moves forward). The first frame is due, then the first one at or after each further
    ``every_s`` on the grid started by it (a late frame does not shift the grid; a gap longer than
    a period sends one frame, not a burst). A clock that goes back (a camera's time set back)
    starts the grid again at that frame, which is due."""

    TOLERANCE_S = 1e-6  # a frame at 2.0 s on a clock read as 1.9999999 is on time

    def __init__(self, every_s: float):
        if not every_s > 0:
            raise ValueError(f"capture interval must be > 0 s (got {every_s})")
        self.every_s = float(every_s)
        self._origin: float | None = None
        self._last = 0.0
        self._slot = 0  # the next capture is due at origin + slot * every_s

    def due(self, t: float) -> bool:
        if self._origin is None or t < self._last:
            self._origin, self._last, self._slot = t, t, 1
            return True
        self._last = t
        elapsed = t - self._origin
        if elapsed + self.TOLERANCE_S < self._slot * self.every_s:
            return False
        self._slot = int((elapsed + self.TOLERANCE_S) // self.every_s) + 1
        return True


@dataclass
class Selection:
    reasons: list[str]
    uncertainty: Uncertainty | None  # None: a capture taken without a model
    image: bytes
    image_format: str
    width: int
    height: int
    hash: int

    def stats(self) -> dict:
        """The sample's ``confidence``, ``margin``, ``entropy`` (None each without a model)."""
        if self.uncertainty is None:
            return {"confidence": None, "margin": None, "entropy": None}
        return self.uncertainty.as_dict()


@dataclass
class Sampler:
    """Stateful selector: ``consider(frame, probs)`` returns a :class:`Selection` or None."""

    policy: SamplingPolicy = field(default_factory=SamplingPolicy)
    seed: int | None = None
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._minute: collections.deque[float] = collections.deque()
        self._hour: collections.deque[float] = collections.deque()
        self._hashes: dict[str | None, collections.deque[int]] = {}  # region -> its recent samples' hashes
        self.considered = self.selected = self.rate_limited = self.duplicates = 0
        self.captured = 0  # of selected: capture-mode samples

    def _within_rate(self, now: float) -> bool:
        while self._minute and now - self._minute[0] >= 60:
            self._minute.popleft()
        while self._hour and now - self._hour[0] >= 3600:
            self._hour.popleft()
        return len(self._minute) < self.policy.per_minute and len(self._hour) < self.policy.per_hour

    def consider(self, frame: np.ndarray, probs: np.ndarray | None, subject: np.ndarray | None = None,
                 capture: bool = False, region: str | None = None) -> Selection | None:
        """Select ``frame`` (sent as the sample's image) when ``probs`` are uncertain; duplicates are judged
        on ``subject`` (what was classified: a region's crop), the frame when None, against the recent
        samples of the same ``region`` (two regions that look alike are not duplicates of each other).
        ``capture``: the frame is due in capture mode: selected whatever ``probs`` say (``probs`` None:
        taken without a model), not rate-limited nor counted against the rates, de-duplicated all the same."""
        if not self.policy.enabled and not capture:
            return None
        self.considered += 1
        u = measure(probs) if probs is not None else None
        reasons = reasons_for(u, self.policy) if u is not None and self.policy.enabled else []
        if not reasons and u is not None and self.policy.enabled and self.policy.audit_fraction > 0 \
                and self._rng.random() < self.policy.audit_fraction:
            reasons = ["random_audit"]
        if capture:
            reasons = reasons + [CAPTURE]
        if not reasons:
            return None
        now = self.clock()
        if not capture and not self._within_rate(now):
            self.rate_limited += 1
            return None
        h = phash(frame if subject is None else subject)
        recent = self._hashes.setdefault(region, collections.deque(maxlen=self.policy.dedup_window))
        if any(hamming(h, k) <= self.policy.dedup_distance for k in recent):
            self.duplicates += 1
            return None
        data, w, hh = encode_image(frame, self.policy.image_format, self.policy.max_bytes, self.policy.max_side,
                                   self.policy.jpeg_quality)
        recent.append(h)
        if capture:
            self.captured += 1
        else:
            self._minute.append(now)
            self._hour.append(now)
        self.selected += 1
        return Selection(reasons, u, data, self.policy.image_format, w, hh, h)

"""A "new camera": the shift a model meets when the photos come from another sensor and lens.

:func:`new_camera` renders RGB uint8 photos as a different, cheaper camera would have taken them:

1. a colour cast: a per-channel gain and offset (the camera's white balance; by default a warm,
   slightly green tint: red up, blue down), the same for every photo, with a small per-photo jitter
   (auto exposure);
2. defocus: a Gaussian blur of ``blur_sigma`` pixels;
3. sensor noise: Gaussian, ``noise_sigma`` grey levels per pixel and channel;
4. the camera's encoder: JPEG re-encoding at ``jpeg_quality`` (4:2:0 chroma, OpenCV's default).

It is deterministic: the same photos and ``seed`` give the same bytes. ``seed`` picks the camera
(its cast) and the per-photo jitter and noise. Pure NumPy and OpenCV (no TensorFlow), so tests,
benchmarks and the device side can all use it; the feedback-loop test and benchmark
(``tests/test_colour_loop.py``, ``benchmarks/bench_colour_loop.py``) show a CIFAR-10 model the
CIFAR photos through it.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["CameraShift", "new_camera"]


@dataclass(frozen=True)
class CameraShift:
    """The settings of a new camera; the defaults are the shift the colour-loop test and benchmark use."""

    gain: tuple[float, float, float] = (1.25, 1.05, 0.7)     # per channel, R G B
    offset: tuple[float, float, float] = (12.0, 8.0, -10.0)  # grey levels added after the gain
    cast_jitter: float = 0.05                                # per-camera spread of gain (seeded)
    exposure_jitter: float = 0.08                            # per-photo spread of a common gain
    blur_sigma: float = 1.0
    noise_sigma: float = 4.0
    jpeg_quality: int = 35

    def __post_init__(self):
        if len(self.gain) != 3 or len(self.offset) != 3:
            raise ValueError(f"gain and offset need 3 values (R, G, B); got {self.gain}, {self.offset}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in 1..100; got {self.jpeg_quality}")
        if self.blur_sigma < 0 or self.noise_sigma < 0:
            raise ValueError(f"blur_sigma and noise_sigma must be >= 0; got {self.blur_sigma}, {self.noise_sigma}")


def new_camera(images_rgb: np.ndarray, seed: int = 0, shift: CameraShift | None = None) -> np.ndarray:
    """``images_rgb`` (N x H x W x 3 uint8, or one H x W x 3 photo) as the new camera takes them.

    Returns a new uint8 array of the same shape. See the module doc for the steps; ``shift`` holds
    their settings (default :class:`CameraShift`).
    """
    x = np.asarray(images_rgb)
    if x.dtype != np.uint8:
        raise TypeError(f"new_camera takes uint8 RGB photos; got dtype {x.dtype}")
    single = x.ndim == 3
    if single:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"new_camera takes N x H x W x 3 RGB photos; got shape {np.asarray(images_rgb).shape}")
    s = shift or CameraShift()
    rng = np.random.default_rng(seed)
    gain = np.asarray(s.gain, np.float32) * (1 + rng.uniform(-s.cast_jitter, s.cast_jitter, 3)).astype(np.float32)
    offset = np.asarray(s.offset, np.float32)
    exposure = (1 + rng.uniform(-s.exposure_jitter, s.exposure_jitter, len(x))).astype(np.float32)
    params = [int(cv2.IMWRITE_JPEG_QUALITY), int(s.jpeg_quality)]
    out = np.empty_like(x)
    for i, photo in enumerate(x):
        img = photo.astype(np.float32) * (gain * exposure[i]) + offset
        if s.blur_sigma > 0:
            img = cv2.GaussianBlur(img, (0, 0), s.blur_sigma)
        if s.noise_sigma > 0:
            img = img + rng.normal(0.0, s.noise_sigma, img.shape).astype(np.float32)
        img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), params)
        if not ok:
            raise RuntimeError("cv2.imencode could not write a JPEG")
        out[i] = cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return out[0] if single else out

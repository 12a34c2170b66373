"""Sample videos: real digits (MNIST-like 28x28 tiles) drawn dark-on-light on paper-like frames.

Each frame holds one digit at a random position and size under uneven light (a gradient, a
spot, paper texture, a warm tint, slight defocus and sensor noise), written with
``cv2.VideoWriter``: the demo's camera, and the tests' and benchmarks' stand-in for one, so that
the device decodes a real video file with OpenCV. Needs only OpenCV and NumPy.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def paper_frame(digit: np.ndarray, rng: np.random.Generator, size: tuple[int, int] = (640, 480)) -> np.ndarray:
    """One BGR frame: ``digit`` (28x28 MNIST, light on dark) as dark ink on lit paper."""
    w, h = size
    sw, sh = w // 4, h // 4  # light and texture vary slowly: draw them small, scale up
    yy, xx = np.mgrid[0:sh, 0:sw].astype(np.float32) * 4
    base = rng.uniform(120, 235)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * (xx / w - 0.5) + np.sin(angle) * (yy / h - 0.5))
    light = base * (1 + rng.uniform(0.0, 0.6) * ramp)
    sx, sy = rng.uniform(0, w), rng.uniform(0, h)
    spot = np.exp(-(((xx - sx) ** 2 + (yy - sy) ** 2) / (2 * (rng.uniform(0.2, 0.5) * w) ** 2)))
    light = light * (0.8 + 0.35 * spot)
    texture = cv2.GaussianBlur(rng.standard_normal((sh, sw), dtype=np.float32), (0, 0), 1) * 8
    paper = cv2.resize(np.clip(light + texture, 20, 255), (w, h), interpolation=cv2.INTER_LINEAR)

    side = int(rng.uniform(0.3, 0.9) * h)  # the 28x28 tile; the digit itself is 20/28 of it
    tile = cv2.resize(digit, (side, side), interpolation=cv2.INTER_CUBIC).astype(np.float32) / 255
    tile = np.clip(tile, 0, 1) * rng.uniform(0.8, 0.97)
    x0, y0 = int(rng.uniform(0, w - side)), int(rng.uniform(0, h - side))
    alpha = np.zeros((h, w), np.float32)
    alpha[y0:y0 + side, x0:x0 + side] = tile

    tint = np.array([rng.uniform(0.85, 0.95), rng.uniform(0.93, 1.0), 1.0], np.float32)
    ink = np.array([rng.uniform(20, 60), rng.uniform(15, 40), rng.uniform(15, 40)], np.float32)
    img = paper[..., None] * tint * (1 - alpha[..., None]) + ink * alpha[..., None]
    sigma = rng.uniform(0.3, 1.2)
    img = cv2.GaussianBlur(img, (0, 0), sigma)
    noise = np.empty(img.shape, np.float32)
    cv2.setRNGSeed(int(rng.integers(1 << 30)))
    cv2.randn(noise, 0.0, float(rng.uniform(1.5, 4)))
    img += noise
    return np.clip(img, 0, 255).astype(np.uint8)


def write_digit_video(path: str | Path, digits: np.ndarray, fps: float = 10, size: tuple[int, int] = (640, 480),
                      seed: int = 0, fourcc: str = "MJPG") -> Path:
    """Write one frame per digit; returns ``path``. MJPG in .avi decodes everywhere."""
    path = Path(path)
    rng = np.random.default_rng(seed)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, size)
    if not writer.isOpened():
        raise RuntimeError(f"cv2.VideoWriter cannot write {path} with {fourcc}")
    try:
        for d in digits:
            writer.write(paper_frame(d, rng, size))
    finally:
        writer.release()
    return path


def write_blank_video(path: str | Path, n: int, size: tuple[int, int] = (640, 480), fps: float = 10) -> Path:
    """Plain paper frames (no digit): the model cannot be sure of these."""
    rng = np.random.default_rng(1)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    for _ in range(n):
        writer.write(np.clip(rng.normal(200, 3, (size[1], size[0], 3)), 0, 255).astype(np.uint8))
    writer.release()
    return Path(path)


def cluttered_scene(rng: np.random.Generator, size: tuple[int, int] = (640, 480),
                    clutter: np.ndarray | None = None) -> np.ndarray:
    """A BGR background full of edges and colour: random rectangles and circles, other photos
    (``clutter``: RGB images, pasted at random sizes) and sensor noise."""
    w, h = size
    img = np.empty((h, w, 3), np.uint8)
    img[:] = rng.integers(40, 200, 3)
    for _ in range(25):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        if rng.random() < 0.5:
            cv2.rectangle(img, (x, y), (x + int(rng.integers(10, 160)), y + int(rng.integers(10, 120))), colour, -1)
        else:
            cv2.circle(img, (x, y), int(rng.integers(5, 60)), colour, -1)
    for photo in [] if clutter is None else clutter:
        side = int(rng.integers(24, 120))
        x, y = int(rng.integers(0, w - side)), int(rng.integers(0, h - side))
        img[y:y + side, x:x + side] = cv2.resize(cv2.cvtColor(photo, cv2.COLOR_RGB2BGR), (side, side))
    noise = rng.normal(0, 3, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def place(frame: np.ndarray, photo: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """``frame`` with the RGB ``photo`` scaled into ``box`` (x, y, w, h in pixels; nearest-neighbour,
    so a whole-number scale keeps every pixel of the photo)."""
    x, y, w, h = box
    frame[y:y + h, x:x + w] = cv2.resize(cv2.cvtColor(photo, cv2.COLOR_RGB2BGR), (w, h), interpolation=cv2.INTER_NEAREST)
    return frame


def region_frames(regions: dict[str, tuple[tuple[int, int, int, int], np.ndarray]], seed: int = 0,
                  size: tuple[int, int] = (640, 480), clutter: np.ndarray | None = None):
    """Frames of a fixed camera: each named region ``box`` shows the next of its RGB photos, over a
    cluttered scene that changes every frame. Yields BGR frames, as many as the shortest photo list."""
    rng = np.random.default_rng(seed)
    n = min(len(photos) for _, photos in regions.values())
    for i in range(n):
        pick = None if clutter is None else clutter[rng.integers(0, len(clutter), 6)]
        frame = cluttered_scene(rng, size, pick)
        for box, photos in regions.values():
            place(frame, photos[i], box)
        yield frame


def write_region_video(path: str | Path, regions: dict[str, tuple[tuple[int, int, int, int], np.ndarray]],
                       fps: float = 10, size: tuple[int, int] = (640, 480), seed: int = 0,
                       clutter: np.ndarray | None = None, quality: int = 95) -> Path:
    """:func:`region_frames` as an MJPG video (``quality`` of its JPEG frames, 0..100)."""
    path = Path(path)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    if not writer.isOpened():
        raise RuntimeError(f"cv2.VideoWriter cannot write {path} with MJPG")
    writer.set(cv2.VIDEOWRITER_PROP_QUALITY, quality)
    try:
        for frame in region_frames(regions, seed, size, clutter):
            writer.write(frame)
    finally:
        writer.release()
    return path

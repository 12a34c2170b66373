"""Micro-benchmarks shared by ``edge-classify bench`` and ``benchmarks/bench_device.py``."""
from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np

from . import batch
from .errors import SourceReadError
from .runtime import load_bundle


def bench_interpreter(bundle_dir: str | Path, runs: int = 500, warmup: int = 20, delegate: str = "auto",
                      num_threads: int | None = None) -> dict:
    """Latency of ``set_input`` + ``invoke`` + ``scores`` on the bundle's model (random input)."""
    if runs < 1:
        raise ValueError(f"runs must be >= 1 (got {runs})")
    b = load_bundle(bundle_dir, delegate, num_threads)
    pixels = np.random.default_rng(0).uniform(0, 255, b.manifest.input.shape)
    lat = batch.latency(b.interpreter, pixels, normalization=b.manifest.input.normalization, runs=runs, warmup=warmup)
    return {"model": b.manifest.name, "version": b.manifest.version, "delegate": b.delegate, **lat}


def bench_decode(video: str | Path, max_frames: int | None = None) -> dict:
    """Frames per second OpenCV decodes ``video`` at (the ceiling of any pipeline on it)."""
    cap = cv2.VideoCapture(str(video))
    if not cap.isOpened():
        raise SourceReadError(f"{video}: not a readable video (OpenCV cannot open it)")
    n, t = 0, time.perf_counter()
    while max_frames is None or n < max_frames:
        ok, _ = cap.read()
        if not ok:
            break
        n += 1
    dt = time.perf_counter() - t
    cap.release()
    return {"frames": n, "seconds": round(dt, 4), "fps": round(n / dt, 1) if dt > 0 else None}

"""Micro-benchmarks shared by ``edge-classify bench`` and ``benchmarks/bench_device.py``."""
from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np

from . import classify
from .runtime import load_bundle


def _summary(times_s: list[float]) -> dict:
    a = np.asarray(times_s) * 1e3
    return {"runs": len(a), "p50_ms": round(float(np.percentile(a, 50)), 4),
            "p95_ms": round(float(np.percentile(a, 95)), 4), "mean_ms": round(float(a.mean()), 4),
            "fps": round(float(1e3 / a.mean()), 1) if a.mean() > 0 else None}


def bench_interpreter(bundle_dir: str | Path, runs: int = 500, warmup: int = 20, delegate: str = "auto",
                      num_threads: int | None = None) -> dict:
    """Latency of ``set_input`` + ``invoke`` + ``scores`` on the bundle's model (random input)."""
    if runs < 1:
        raise ValueError(f"runs must be >= 1 (got {runs})")
    b = load_bundle(bundle_dir, delegate, num_threads)
    it = b.interpreter
    d = classify.input_details(it)
    rng = np.random.default_rng(0)
    x = classify.quantize(rng.uniform(0, 255, d["shape"]) * b.manifest.input.normalization.scale
                          + b.manifest.input.normalization.offset, d)
    times = []
    for i in range(warmup + runs):
        t = time.perf_counter()
        classify.set_input(it, x)
        it.invoke()
        classify.scores(it)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return {"model": b.manifest.name, "version": b.manifest.version, "delegate": b.delegate, **_summary(times)}


def bench_decode(video: str | Path, max_frames: int | None = None) -> dict:
    """Frames per second OpenCV decodes ``video`` at (the ceiling of any pipeline on it)."""
    cap = cv2.VideoCapture(str(video))
    if not cap.isOpened():
        raise ValueError(f"cannot open video {video}")
    n, t = 0, time.perf_counter()
    while max_frames is None or n < max_frames:
        ok, _ = cap.read()
        if not ok:
            break
        n += 1
    dt = time.perf_counter() - t
    cap.release()
    return {"frames": n, "seconds": round(dt, 4), "fps": round(n / dt, 1) if dt > 0 else None}

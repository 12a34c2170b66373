"""Many images through one interpreter: batched scores and latency, the one copy of each.

``predict_batch`` is what evaluation, robustness and the export report run a .tflite with;
``latency`` is what ``edge-classify bench`` and the export report time. Both take a stock
interpreter (``sdk.runtime.make_interpreter`` or a loaded bundle's) and go through the same
``classify.quantize`` / ``set_input`` / ``dequantize`` as a single frame does.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from . import classify
from .bundle import Normalization

logger = logging.getLogger(__name__)

MIN_TIMED_RUNS = 20  # ``latency`` stops at ``max_seconds`` only once this many runs are timed


def _model_input(x: np.ndarray, detail: dict, normalization: Normalization | None) -> np.ndarray:
    """Pixels -> ``pixel * scale + offset`` (when a normalization is given) -> the input dtype."""
    values = x if normalization is None else np.asarray(x, np.float64) * normalization.scale + normalization.offset
    return classify.quantize(values, detail)


def _allocate_batch(interpreter: Any, batch: int) -> int:
    """Resize the input to ``batch`` images; the batch the interpreter keeps when it cannot be resized."""
    detail = classify.input_details(interpreter)
    shape = [int(s) for s in detail["shape"]]
    if shape[0] == batch:
        return batch
    try:
        interpreter.resize_tensor_input(detail["index"], [batch, *shape[1:]], strict=False)
        interpreter.allocate_tensors()
        return batch
    except (RuntimeError, ValueError) as e:
        logger.info("cannot resize the interpreter input to %d (%s); running %d at a time", batch, e, shape[0])
        interpreter.resize_tensor_input(detail["index"], shape, strict=False)
        interpreter.allocate_tensors()
        return shape[0]


def predict_batch(interpreter: Any, x: np.ndarray, *, normalization: Normalization | None = None,
                  batch_size: int = 256) -> np.ndarray:
    """Float64 scores ``(len(x), classes)`` for images ``x`` (N x H x W [x C] pixels).

    Each image goes through ``normalization`` (the manifest's; ``None``: values as they are,
    e.g. raw pixels for models trained by ``train``), the input quantization and, for an integer
    output, ``scale * (q - zero_point)`` computed in int64: the same numbers as one
    ``set_input`` / ``invoke`` / ``scores`` per image. The input is resized to
    ``min(batch_size, len(x))`` images when the interpreter allows it (it is left at that size),
    else the images go at the batch it has (1); a short last batch is padded with zeros.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
    x = np.asarray(x)
    out = interpreter.get_output_details()[0]
    if len(x) == 0:
        return np.empty((0, *[int(s) for s in out["shape"][1:]]), np.float64)
    batch = _allocate_batch(interpreter, min(batch_size, len(x)))
    detail, out = classify.input_details(interpreter), interpreter.get_output_details()[0]
    scores = []
    for start in range(0, len(x), batch):
        chunk = x[start : start + batch]
        n = len(chunk)
        if n < batch:  # keep the allocated shape
            chunk = np.concatenate([chunk, np.zeros((batch - n, *chunk.shape[1:]), chunk.dtype)])
        classify.set_input(interpreter, _model_input(chunk, detail, normalization))
        interpreter.invoke()
        scores.append(classify.dequantize(interpreter.get_tensor(out["index"])[:n], out))
    return np.concatenate(scores)


def summary(times_s: list[float] | np.ndarray) -> dict:
    """``runs``, ``p50_ms``, ``p95_ms``, ``mean_ms`` and ``fps`` of a list of durations in seconds."""
    a = np.asarray(times_s) * 1e3
    return {"runs": len(a), "p50_ms": round(float(np.percentile(a, 50)), 4),
            "p95_ms": round(float(np.percentile(a, 95)), 4), "mean_ms": round(float(a.mean()), 4),
            "fps": round(float(1e3 / a.mean()), 1) if a.mean() > 0 else None}


def latency(interpreter: Any, image: np.ndarray, *, normalization: Normalization | None = None, runs: int = 200,
            warmup: int = 10, max_seconds: float | None = None) -> dict:
    """Time ``set_input`` + ``invoke`` + ``scores`` on one image, batch 1, as a frame pays them.

    Returns :func:`summary` of up to ``runs`` timed runs after ``warmup`` untimed ones; with
    ``max_seconds`` it stops early once that long has passed and ``MIN_TIMED_RUNS`` are timed.
    """
    if runs < 1:
        raise ValueError(f"runs must be >= 1 (got {runs})")
    _allocate_batch(interpreter, 1)
    tensor = _model_input(np.asarray(image), classify.input_details(interpreter), normalization)

    def once() -> None:
        classify.set_input(interpreter, tensor)
        interpreter.invoke()
        classify.scores(interpreter)

    for _ in range(warmup):
        once()
    times: list[float] = []
    deadline = None if max_seconds is None else time.perf_counter() + max_seconds
    for _ in range(runs):
        t = time.perf_counter()
        once()
        times.append(time.perf_counter() - t)
        if deadline is not None and time.perf_counter() > deadline and len(times) >= MIN_TIMED_RUNS:
            break
    return summary(times)


__all__ = ["MIN_TIMED_RUNS", "latency", "predict_batch", "summary"]

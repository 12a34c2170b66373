"""Free functions around an interpreter, as in pycoral: set the input, read scores, top-k.

Everything is plain numpy; the quantization comes from the interpreter's tensor details
(which the bundle loader has checked against the manifest), never from a constant.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np


class Class(NamedTuple):
    """One ranked class: its index in the labels and its score (a probability for softmax models)."""

    id: int
    score: float


def input_details(interpreter: Any) -> dict:
    return interpreter.get_input_details()[0]


def input_size(interpreter: Any) -> tuple[int, int]:
    """``(width, height)`` of the input tensor."""
    _, h, w = input_details(interpreter)["shape"][:3]
    return int(w), int(h)


def quantize(values: np.ndarray, detail: dict) -> np.ndarray:
    """Real values -> the tensor's dtype, with its (scale, zero point) when it is an integer type."""
    dtype = np.dtype(detail["dtype"])
    if dtype.kind == "f":
        return values.astype(dtype, copy=False)
    scale, zero_point = detail["quantization"]
    if scale == 0:
        raise ValueError(f"tensor {detail.get('name')!r} is {dtype} but carries no quantization")
    info = np.iinfo(dtype)
    q = np.rint(values / scale) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def set_input(interpreter: Any, tensor: np.ndarray, detail: dict | None = None) -> None:
    """Copy an already prepared tensor (shape and dtype of the input) into the interpreter.
    ``detail``: the input's details, when the caller keeps them (asking the interpreter each frame
    costs as much as the copy)."""
    detail = detail or input_details(interpreter)
    if tensor.dtype != np.dtype(detail["dtype"]):
        raise TypeError(f"input dtype {tensor.dtype} != model input {np.dtype(detail['dtype'])}; use quantize()")
    interpreter.set_tensor(detail["index"], tensor.reshape(detail["shape"]))


def dequantize(raw: np.ndarray, detail: dict) -> np.ndarray:
    """Tensor values -> float64: scale * (q - zero_point), computed in int64, for an integer tensor."""
    if np.issubdtype(raw.dtype, np.integer):
        scale, zero_point = detail["quantization"]
        if scale:
            return scale * (raw.astype(np.int64) - zero_point)
    return raw.astype(np.float64)


def scores(interpreter: Any, detail: dict | None = None) -> np.ndarray:
    """The output as float64, dequantized: scale * (q - zero_point), computed in int64.
    ``detail``: the output's details, when the caller keeps them."""
    detail = detail or interpreter.get_output_details()[0]
    return dequantize(interpreter.get_tensor(detail["index"])[0], detail)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - np.max(x))
    return e / e.sum()


def probabilities(interpreter: Any, activation: str = "softmax", detail: dict | None = None) -> np.ndarray:
    """Scores as a probability distribution: softmax applied for ``logits`` models, clipped
    and renormalised for softmax models (INT8 outputs do not sum to exactly 1)."""
    s = scores(interpreter, detail)
    if activation == "logits":
        return softmax(s)
    s = np.clip(s, 0.0, None)
    total = s.sum()
    return s / total if total > 0 else np.full_like(s, 1.0 / len(s))


def top_k(values: np.ndarray, k: int = 1, threshold: float = -np.inf) -> list[Class]:
    """The ``k`` best classes with a score >= ``threshold``, best first."""
    if k < 1:
        raise ValueError(f"top_k must be >= 1 (got {k})")
    k = min(k, len(values))
    idx = np.argpartition(-values, k - 1)[:k]
    idx = idx[np.argsort(-values[idx], kind="stable")]
    return [Class(int(i), float(values[i])) for i in idx if values[i] >= threshold]


def get_classes(interpreter: Any, top: int = 1, score_threshold: float = -np.inf) -> list[Class]:
    """pycoral's one-liner: ranked classes from the interpreter's current output."""
    return top_k(scores(interpreter), top, score_threshold)

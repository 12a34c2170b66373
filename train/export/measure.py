"""Measuring models and artefacts: accuracy per split and class, size, gzip size, latency, zeros.

Every artefact of a bundle is judged against the float Keras model on the same splits
(:class:`Reference`); the figures go into the export report.
"""
from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np


def gzip_size(data: bytes) -> int:
    """Size of ``data`` after gzip -9: what sparse/clustered weights buy on the wire."""
    return len(gzip.compress(data, compresslevel=9))


def predict_keras(model, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Keras scores for uint8 images, converted to float32 a chunk at a time (big inputs stay small)."""
    out = []
    for start in range(0, len(x), 4096):
        chunk = x[start : start + 4096].astype(np.float32)
        out.append(np.asarray(model.predict(chunk, batch_size=batch_size, verbose=0), dtype=np.float32))
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def accuracy_block(y: np.ndarray, pred: np.ndarray, num_classes: int) -> dict:
    """``n``, overall accuracy and per-class accuracy (None for a class absent from ``y``)."""
    per_class = []
    for c in range(num_classes):
        mask = y == c
        per_class.append(float((pred[mask] == c).mean()) if mask.any() else None)
    return {"n": int(len(y)), "accuracy": float((pred == y).mean()), "per_class": per_class}


def per_class_delta(base: dict, other: dict, labels: list[str]) -> dict[str, float | None]:
    """Per-class accuracy change from ``base`` to ``other``, in percentage points, by label."""
    out = {}
    for lab, a, b in zip(labels, base["per_class"], other["per_class"]):
        out[lab] = None if a is None or b is None else round((b - a) * 100, 2)
    return out


def evaluate(predict, splits: dict, num_classes: int) -> dict[str, dict]:
    """:func:`accuracy_block` of ``predict(x)`` on the labelled validation and test splits."""
    res = {}
    for key, name in (("val", "validation"), ("test", "test")):
        ds = splits.get(key)
        if ds is None or ds.y is None or len(ds) == 0:
            continue
        res[name] = accuracy_block(ds.y, predict(ds.x).argmax(axis=1), num_classes)
    return res


def accuracies(model, splits: dict, num_classes: int) -> dict[str, float]:
    """Accuracy of a Keras model per split (``validation``, ``test``)."""
    return {k: v["accuracy"] for k, v in evaluate(lambda x: predict_keras(model, x), splits, num_classes).items()}


@dataclass(frozen=True)
class Reference:
    """The float model's figures every artefact is judged against, and how it is measured here."""

    splits: dict  # {"train", "val", "test"} Datasets
    labels: list[str]
    float_eval: dict[str, dict]  # evaluate() of the float Keras model
    float_tflite_bytes: int  # size of its float32 .tflite: the 1.00 of "size_vs_float"
    threads: int  # measuring threads
    latency_runs: int

    @property
    def sample(self) -> np.ndarray:
        """One validation image: the batch-1 latency input."""
        return self.splits["val"].x[:1]

    def judge(self, head: dict[str, Any], *, size: int, gzip_bytes: int, predict: Callable[[np.ndarray], np.ndarray],
              latency: Callable[[], dict], **details: Any) -> tuple[dict[str, Any], dict[str, dict]]:
        """An artefact's report entry (``head``, sizes, ``details``, accuracy and per-class change vs
        float, latency) and its :func:`evaluate` result."""
        ev = evaluate(predict, self.splits, len(self.labels))
        entry = {
            **head,
            "size_bytes": size,
            "gzip_bytes": gzip_bytes,
            "size_vs_float": round(size / self.float_tflite_bytes, 4),
            **details,
            "accuracy": {k: v["accuracy"] for k, v in ev.items()},
            "per_class_delta_pts": {k: per_class_delta(self.float_eval[k], v, self.labels) for k, v in ev.items()},
            "latency": latency(),
        }
        return entry, ev


def tflite_weight_sparsity(model: bytes) -> float:
    """Share of zero values in the constant weight tensors of a .tflite (int8/float weights)."""
    from tensorflow.lite.tools import flatbuffer_utils as fu

    obj = fu.convert_bytearray_to_object(bytearray(model))
    total = zeros = 0
    for sub in obj.subgraphs:
        for op in sub.operators or []:
            name = fu.opcode_to_name(obj, op.opcodeIndex)
            if name not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
                continue
            if op.inputs is None or len(op.inputs) < 2 or op.inputs[1] < 0:
                continue
            t = sub.tensors[op.inputs[1]]
            data = obj.buffers[t.buffer].data
            if data is None or len(data) == 0:
                continue
            width = {0: 4, 1: 2, 9: 1, 3: 1}.get(int(t.type))  # FLOAT32, FLOAT16, INT8, UINT8
            if width is None:
                continue
            raw = np.asarray(data, dtype=np.uint8).reshape(-1, width)
            total += len(raw)
            zeros += int(np.count_nonzero(~raw.any(axis=1)))
    return round(zeros / total, 4) if total else 0.0


def io_details(model: bytes) -> dict:
    """Shape, dtype and quantization of the first input and output, as the interpreter reports them."""
    from sdk.runtime import make_interpreter

    it = make_interpreter(model)

    def one(d):
        scale, zero = d["quantization"]
        return {
            "shape": [int(s) for s in d["shape"]],
            "shape_signature": [int(s) for s in d.get("shape_signature", d["shape"])],
            "dtype": np.dtype(d["dtype"]).name,
            "quantization": {"scale": float(scale), "zero_point": int(zero)} if scale else None,
        }

    return {"input": one(it.get_input_details()[0]), "output": one(it.get_output_details()[0])}


def predict_tflite(model: bytes, x: np.ndarray, *, batch_size: int = 256, num_threads: int | None = None) -> np.ndarray:
    """Scores of a .tflite on raw-pixel images ``x``: :func:`sdk.batch.predict_batch` on a fresh
    interpreter (batched, so 10k MNIST images take about a second)."""
    from sdk.batch import predict_batch
    from sdk.runtime import make_interpreter

    return predict_batch(make_interpreter(model, num_threads=num_threads), x, batch_size=batch_size)


def latency_tflite(
    model: bytes, sample: np.ndarray, *, num_threads: int | None = None, runs: int = 200, warmup: int = 10, max_seconds: float = 10.0
) -> dict:
    """Batch-1 latency (ms) of a .tflite on this machine (:func:`sdk.batch.latency`), with the
    interpreter package that ran it."""
    from sdk.batch import latency
    from sdk.runtime import backend_name, make_interpreter

    lat = latency(make_interpreter(model, num_threads=num_threads), sample[:1], runs=runs, warmup=warmup,
                  max_seconds=max_seconds)
    lat.pop("fps")
    return {"runtime": backend_name(), "threads": num_threads, **lat}


def measuring_threads(requested: int | None) -> int:
    """Threads to use for measurements here: the requested count, at most this machine's cores."""
    cores = os.cpu_count() or 1
    return max(1, min(requested or cores, cores))

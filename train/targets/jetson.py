"""NVIDIA Jetson: FP16 TFLite for the GPU delegate and ONNX for TensorRT.

Besides the spec, the two checks this target runs: the TFLite Analyzer's GPU-delegate
compatibility report, and tf2onnx + onnxruntime against the Keras model.
"""
from __future__ import annotations

import contextlib
import io
import logging
import time
from pathlib import Path

import numpy as np

from train.targets import COMMON_OPTIONS, Artefact, TargetSpec, register_target

logger = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
ONNX_OPSET = 17
ONNX_MAX_ABS_DIFF = 1e-4


@register_target
def jetson() -> TargetSpec:
    return TargetSpec(
        name="jetson",
        description="NVIDIA Jetson: FP16 TFLite (GPU delegate checked) + ONNX for TensorRT (checked with onnxruntime)",
        artefacts=(Artefact("model", "model.tflite", "float16", "FP16 weights, float32 I/O, for the GPU delegate"),),
        delegate="gpu",
        io_dtypes=("float32",),
        gpu_check=True,
        onnx=True,
        notes="trtexec --onnx=model.onnx --saveEngine=model_fp16.plan --fp16 --shapes=pixels:1xHxWxC",
        accepts=COMMON_OPTIONS,
    )


def gpu_compatibility(model: bytes) -> dict:
    """tf.lite's Analyzer with ``gpu_compatibility=True``; its text is kept verbatim."""
    from train._tf import tf

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        tf.lite.experimental.Analyzer.analyze(model_content=model, gpu_compatibility=True)
    text = buf.getvalue()
    warnings = [ln.strip() for ln in text.splitlines() if "GPU COMPATIBILITY WARNING" in ln.upper()]
    compatible = "looks compatible with gpu delegate" in text.lower() and not warnings
    return {"compatible": compatible, "warnings": warnings, "analyzer_output": text}


def trtexec_command(onnx_file: str, input_name: str, hwc: list[int]) -> str:
    """The TensorRT engine build for the device (JetPack ships trtexec there)."""
    h, w, c = hwc
    return (
        f"/usr/src/tensorrt/bin/trtexec --onnx={onnx_file} --saveEngine=model_fp16.plan --fp16 "
        f"--shapes={input_name}:1x{h}x{w}x{c}"
    )


def export_onnx(model, path: Path, sample: np.ndarray, keras_scores: np.ndarray) -> dict:
    """tf2onnx (dynamic batch, input ``pixels``), then onnxruntime against ``keras_scores`` on ``sample``."""
    import onnxruntime as ort
    import tf2onnx

    from train._tf import tf

    shape = [None, *[int(d) for d in model.input_shape[1:]]]
    t0 = time.perf_counter()
    try:
        tf2onnx.convert.from_keras(
            model, input_signature=[tf.TensorSpec(shape, tf.float32, name="pixels")], opset=ONNX_OPSET, output_path=str(path)
        )
    except Exception as e:  # tf2onnx raises whatever its graph rewrite hits
        logger.warning("ONNX export failed: %s", e)
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}
    seconds = time.perf_counter() - t0
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    onnx_out = sess.run(None, {name: sample.astype(np.float32)})[0]
    diff = float(np.abs(onnx_out - keras_scores).max())
    return {
        "ok": diff <= ONNX_MAX_ABS_DIFF,
        "file": path.name,
        "opset": ONNX_OPSET,
        "input_name": name,
        "checked_images": int(len(sample)),
        "max_abs_diff": diff,
        "top1_agreement": float((onnx_out.argmax(1) == keras_scores.argmax(1)).mean()),
        "tolerance": ONNX_MAX_ABS_DIFF,
        "convert_seconds": round(seconds, 2),
        "trtexec": trtexec_command(path.name, name, shape[1:]),
    }


def onnx_runner(path: Path):
    """``(predict(x) -> scores, latency(sample, runs) -> dict)`` with onnxruntime on the CPU."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name

    def predict(x):
        return np.concatenate([sess.run(None, {name: x[i : i + 256].astype(np.float32)})[0] for i in range(0, len(x), 256)])

    def latency(sample, runs=200):
        x = sample[:1].astype(np.float32)
        for _ in range(10):
            sess.run(None, {name: x})
        t = []
        for _ in range(runs):
            t0 = time.perf_counter()
            sess.run(None, {name: x})
            t.append((time.perf_counter() - t0) * 1000)
        return {"runtime": "onnxruntime", "runs": runs, "p50_ms": round(float(np.percentile(t, 50)), 4),
                "p95_ms": round(float(np.percentile(t, 95)), 4), "mean_ms": round(float(np.mean(t)), 4)}

    return predict, latency

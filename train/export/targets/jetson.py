"""NVIDIA Jetson: FP16 TFLite for the GPU delegate and ONNX for TensorRT.

Besides the spec, the two builders this target declares: the TFLite Analyzer's GPU-delegate
compatibility report, and the ONNX model (tf2onnx), checked with onnxruntime against Keras and
measured like the .tflite artefacts.
"""
from __future__ import annotations

import contextlib
import io
import logging
import time
from pathlib import Path

import numpy as np

from train.export.errors import TargetArtefactError
from train.export.measure import gzip_size, predict_keras
from train.export.targets import COMMON_OPTIONS, Artefact, ArtefactBuilder, BuildContext, Built, TargetSpec, register_target

logger = logging.getLogger(__name__)

GPU_REPORT_FILE = "gpu_compatibility.txt"
ONNX_FILE = "model.onnx"
ONNX_OPSET = 17
ONNX_MAX_ABS_DIFF = 1e-4
ONNX_CHECK_SAMPLES = 256


def build_gpu_report(ctx: BuildContext) -> Built:
    """The Analyzer's GPU-delegate report on the bundle's model, its text kept beside it."""
    result = gpu_compatibility(ctx.primary)
    (ctx.bundle / GPU_REPORT_FILE).write_text(result["analyzer_output"])
    return Built(report={"gpu_compatibility": result}, extra_files={"gpu_compatibility": GPU_REPORT_FILE})


def build_onnx(ctx: BuildContext) -> Built:
    """The checked ONNX model (:func:`export_onnx`), then judged on the splits like any artefact."""
    path = ctx.bundle / ONNX_FILE
    ref = ctx.reference
    sample = ref.splits["val"].x[:ONNX_CHECK_SAMPLES]
    checked = export_onnx(ctx.model, path, sample, predict_keras(ctx.model, sample))  # raises unless there and checked
    predict, latency = onnx_runner(path)
    entry, _ = ref.judge(
        {"file": ONNX_FILE, "role": "onnx", "quantization": "float32", "description": "ONNX for TensorRT (tf2onnx)"},
        size=path.stat().st_size, gzip_bytes=gzip_size(path.read_bytes()), predict=predict,
        latency=lambda: latency(ref.sample, runs=ref.latency_runs),
    )
    return Built(report={"onnx": checked}, extra_files={"onnx": ONNX_FILE}, artefacts=[entry])


def gpu_markdown(report: dict) -> list[str]:
    g = report["gpu_compatibility"]
    return ["", f"GPU delegate (tf.lite Analyzer): {'compatible' if g['compatible'] else 'NOT compatible'}"
            + (f"; {len(g['warnings'])} warning(s)" if g["warnings"] else "") + f". Full output: {GPU_REPORT_FILE}."]


def onnx_markdown(report: dict) -> list[str]:
    o = report["onnx"]
    return ["", f"ONNX vs Keras on {o['checked_images']} images: max |diff| {o['max_abs_diff']:.2e} "
            f"(tolerance {o['tolerance']:.0e}), top-1 agreement {o['top1_agreement']:.2%}.",
            f"On the Jetson: `{o['trtexec']}`"]


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
    """tf2onnx (dynamic batch, input ``pixels``), then onnxruntime against ``keras_scores`` on ``sample``.

    The target promises a checked ONNX, so each way of not getting one raises
    ``TargetArtefactError``: tf2onnx fails, onnxruntime cannot run the file, or its scores differ
    from ``keras_scores`` by more than ``ONNX_MAX_ABS_DIFF``.
    """
    import onnxruntime as ort
    import tf2onnx

    from train._tf import tf

    shape = [None, *[int(d) for d in model.input_shape[1:]]]
    t0 = time.perf_counter()
    try:
        tf2onnx.convert.from_keras(
            model, input_signature=[tf.TensorSpec(shape, tf.float32, name="pixels")], opset=ONNX_OPSET, output_path=str(path)
        )
    except Exception as e:  # tf2onnx raises whatever its graph rewrite (or the file write) hits
        raise TargetArtefactError(
            "jetson", path.name, f"tf2onnx {tf2onnx.__version__} (opset {ONNX_OPSET}) failed: {type(e).__name__}: {e}",
            "fix the cause above (a layer tf2onnx cannot convert, e.g. a Lambda: replace it with a standard layer; "
            "or a bundle folder it cannot write to), then export again",
        ) from e
    seconds = time.perf_counter() - t0
    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        onnx_out = sess.run(None, {name: sample.astype(np.float32)})[0]
    except Exception as e:  # onnxruntime's errors are its own pybind classes
        raise TargetArtefactError(
            "jetson", path.name, f"onnxruntime {ort.__version__} cannot run what tf2onnx wrote: {type(e).__name__}: {e}",
            f"check that tf2onnx and onnxruntime come from the [train] extra (pip install -e '.[train]'); {path} is kept for inspection",
        ) from e
    diff = float(np.abs(onnx_out - keras_scores).max())
    top1 = float((onnx_out.argmax(1) == keras_scores.argmax(1)).mean())
    if not diff <= ONNX_MAX_ABS_DIFF:  # also catches NaN
        raise TargetArtefactError(
            "jetson", path.name,
            f"onnxruntime's scores differ from Keras's by up to {diff:.2e} on {len(sample)} images "
            f"(tolerance {ONNX_MAX_ABS_DIFF:.0e}; top-1 agreement {top1:.2%})",
            f"the ONNX graph does not compute what the Keras model does: look for a layer tf2onnx rewrites (custom or "
            f"Lambda layers) or a tf2onnx/onnxruntime version mismatch; {path} is kept for inspection",
        )
    return {
        "ok": True,
        "file": path.name,
        "opset": ONNX_OPSET,
        "input_name": name,
        "checked_images": int(len(sample)),
        "max_abs_diff": diff,
        "top1_agreement": top1,
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


# The spec last: registering calls it, and it names the builders above.
@register_target
def jetson() -> TargetSpec:
    return TargetSpec(
        name="jetson",
        description="NVIDIA Jetson: FP16 TFLite (GPU delegate checked) + ONNX for TensorRT (checked with onnxruntime)",
        artefacts=(Artefact("model", "model.tflite", "float16", "FP16 weights, float32 I/O, for the GPU delegate"),),
        delegate="gpu",
        io_dtypes=("float32",),
        builders=(
            ArtefactBuilder("gpu_compatibility", build_gpu_report, markdown=gpu_markdown),
            ArtefactBuilder("onnx", build_onnx, emits=ONNX_FILE, markdown=onnx_markdown),
        ),
        notes="trtexec --onnx=model.onnx --saveEngine=model_fp16.plan --fp16 --shapes=pixels:1xHxWxC",
        accepts=COMMON_OPTIONS,
    )

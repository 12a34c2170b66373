"""Post-training quantization: the TFLite conversion of a tf_keras model and its calibration set.

    tflite = convert(model, "full_int8", representative=calibration_set(train, 500))

Models trained by ``train`` take raw 0..255 pixels (their first layer is a ``Rescaling``), so a
calibration set is plain uint8 images and a full-integer model gets input scale 1, zero point 0.
The model handed to :func:`convert` may be plain or quantization-aware (:mod:`train.export.compress`).
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Iterator, Literal, get_args

import numpy as np

from train.export.errors import CalibrationError

logger = logging.getLogger(__name__)

Quantization = Literal["full_int8", "float16", "float32", "dynamic_range"]
QUANTIZATIONS: tuple[str, ...] = get_args(Quantization)
IO_DTYPES: tuple[str, ...] = ("uint8", "int8", "float32")


def calibration_set(ds, n: int = 500, seed: int = 42) -> np.ndarray:
    """``n`` images (uint8, NHWC) drawn stratified by class from ``ds``: the PTQ representative set."""
    from train.data import stratified_sample

    if ds is None or len(ds) == 0:
        raise CalibrationError("the calibration set is empty: the training split holds no images")
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise CalibrationError(f"the calibration set is empty: --calibration-samples must be >= 1, got {n!r}")
    n = int(min(n, len(ds)))
    if n == len(ds):
        return ds.x
    if ds.y is None or n < ds.num_classes:
        logger.warning("calibration set of %d images cannot hold every class; drawing it at random", n)
        pick = np.sort(np.random.default_rng(seed).choice(len(ds), size=n, replace=False))
        return ds.x[pick]
    return stratified_sample(ds, n, seed=seed).x


def representative_dataset(x: np.ndarray) -> Callable[[], Iterator[list[np.ndarray]]]:
    """The converter's ``representative_dataset``: one float32 raw-pixel image per step."""
    if x is None or len(x) == 0:
        raise CalibrationError("the calibration set is empty")

    def gen():
        for i in range(len(x)):
            yield [x[i : i + 1].astype(np.float32)]

    return gen


def convert(
    model,
    quantization: Quantization,
    *,
    representative: np.ndarray | None = None,
    io_dtype: str = "uint8",
    static_batch: bool = True,
    per_channel_dense: bool = False,
) -> bytes:
    """Convert a tf_keras model (plain or QAT) to a .tflite flatbuffer.

    - ``float32``: no optimization.
    - ``float16``: FP16 weights, float32 input/output (GPU delegates compute in FP16).
    - ``dynamic_range``: INT8 weights, float activations, no calibration.
    - ``full_int8``: INT8 weights and activations, builtin INT8 ops only, ``io_dtype`` (uint8 or
      int8) input and output; calibrated on ``representative`` (uint8 images), unless the model
      is a QAT model, which carries its own ranges (``representative`` is then still used for
      any tensor QAT did not cover).

    Convolutions are quantized per channel; fully connected layers per tensor unless
    ``per_channel_dense``. ``static_batch`` freezes the batch dimension to 1 (the Edge TPU needs static shapes; the
    interpreter can still be resized on the host for batched evaluation).
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {', '.join(QUANTIZATIONS)}; got {quantization!r}")
    from train._tf import tf

    shape = [1 if static_batch else None, *[int(d) for d in model.input_shape[1:]]]

    @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32, name="pixels")])
    def serve(pixels):
        return model(pixels, training=False)

    converter = tf.lite.TFLiteConverter.from_concrete_functions([serve.get_concrete_function()], model)
    if quantization == "full_int8" and not per_channel_dense:
        # Per-tensor scales for fully connected layers, as TFLite always did and the Edge TPU
        # expects; per-channel FC adds 12 bytes per output unit for weights and bias alike
        # (5 KB, 8 % of an INT8 LeNet-5) for no measurable accuracy.
        if hasattr(converter, "_experimental_disable_per_channel_quantization_for_dense_layers"):
            converter._experimental_disable_per_channel_quantization_for_dense_layers = True
        else:  # pragma: no cover - depends on the TensorFlow version
            logger.info("this TensorFlow cannot switch off per-channel quantization of dense layers")
    if quantization == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "dynamic_range":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif quantization == "full_int8":
        if io_dtype not in ("uint8", "int8"):
            raise ValueError(f"io_dtype for a full-integer model must be uint8 or int8, got {io_dtype!r}")
        if representative is None or len(representative) == 0:
            raise CalibrationError("full-integer quantization needs a non-empty calibration set")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative_dataset(representative)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8 if io_dtype == "uint8" else tf.int8
        converter.inference_output_type = tf.uint8 if io_dtype == "uint8" else tf.int8
    t0 = time.perf_counter()
    out = converter.convert()
    logger.info("converted to %s: %d bytes in %.1f s", quantization, len(out), time.perf_counter() - t0)
    return bytes(out)

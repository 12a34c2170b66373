"""``sdk.batch``: the one batched predict and latency, on the real INT8 bundle of the fixture."""
from __future__ import annotations

import numpy as np
import pytest

from sdk import _interp, batch, classify
from sdk.bundle import MODEL_FILE, Normalization
from sdk.runtime import backend_name, load_bundle, make_interpreter
from sdk_bundle_fixture import load_mnist, sdk_bundle  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def digits(mnist_dir) -> np.ndarray:
    return load_mnist(mnist_dir, "test")[0][:37, :, :, None]  # 37: not a multiple of the batch


def _one_at_a_time(interpreter, x, normalization=None) -> np.ndarray:
    detail = classify.input_details(interpreter)
    rows = []
    for img in x:
        real = img if normalization is None else img.astype(np.float64) * normalization.scale + normalization.offset
        classify.set_input(interpreter, classify.quantize(real[None], detail))
        interpreter.invoke()
        rows.append(classify.scores(interpreter))
    return np.stack(rows)


def test_predict_batch_equals_the_single_image_loop(sdk_bundle, digits):  # noqa: F811
    b = load_bundle(sdk_bundle)
    out = b.interpreter.get_output_details()[0]
    assert b.manifest.input.dtype == "int8" and out["quantization"][1] != 0  # a zero point to subtract
    norm = b.manifest.input.normalization
    expected = _one_at_a_time(make_interpreter(sdk_bundle / MODEL_FILE), digits, norm)

    got = batch.predict_batch(b.interpreter, digits, normalization=norm, batch_size=16)  # 16 + 16 + 5 (padded)
    assert got.shape == (37, 10) and got.dtype == np.float64
    np.testing.assert_array_equal(got, expected)
    assert classify.input_details(b.interpreter)["shape"][0] == 16  # batched, not one at a time
    # raw bytes through the same factory, a batch bigger than the sample
    fresh = make_interpreter((sdk_bundle / MODEL_FILE).read_bytes())
    np.testing.assert_array_equal(batch.predict_batch(fresh, digits, batch_size=256), expected)
    # a normalization is applied before the input quantization
    half = Normalization(scale=0.5, offset=3.0)
    np.testing.assert_array_equal(batch.predict_batch(b.interpreter, digits, normalization=half, batch_size=16),
                                  _one_at_a_time(make_interpreter(sdk_bundle / MODEL_FILE), digits, half))
    assert batch.predict_batch(b.interpreter, digits[:0]).shape == (0, 10)
    with pytest.raises(ValueError, match="batch_size"):
        batch.predict_batch(b.interpreter, digits, batch_size=0)


class _FixedBatch:
    """An interpreter wrapper whose input cannot be resized (as some delegates refuse)."""

    def __init__(self, interpreter):
        self._it = interpreter

    def __getattr__(self, name):
        return getattr(self._it, name)

    def resize_tensor_input(self, index, shape, strict=False):
        if shape[0] != 1:
            raise RuntimeError("cannot resize")
        self._it.resize_tensor_input(index, shape, strict=strict)


def test_predict_batch_falls_back_to_batch_one(sdk_bundle, digits):  # noqa: F811
    expected = _one_at_a_time(make_interpreter(sdk_bundle / MODEL_FILE), digits[:5])
    fixed = _FixedBatch(make_interpreter(sdk_bundle / MODEL_FILE))
    np.testing.assert_array_equal(batch.predict_batch(fixed, digits[:5], batch_size=4), expected)


def test_latency_and_the_runtime_that_ran(sdk_bundle, digits):  # noqa: F811
    from train.export import latency_tflite

    it = make_interpreter(sdk_bundle / MODEL_FILE)
    batch.predict_batch(it, digits, batch_size=8)  # left at batch 8: latency goes back to 1
    lat = batch.latency(it, digits[0], runs=30, warmup=2)
    assert lat["runs"] == 30 and 0 < lat["p50_ms"] <= lat["p95_ms"] and lat["fps"] > 0
    rep = latency_tflite((sdk_bundle / MODEL_FILE).read_bytes(), digits, num_threads=1, runs=25, warmup=1)
    assert rep["runtime"] == backend_name() == _interp.backend()[0]
    assert set(rep) == {"runtime", "threads", "runs", "p50_ms", "p95_ms", "mean_ms"} and rep["runs"] == 25

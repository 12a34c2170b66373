"""A real model bundle for the device tests: a small CNN trained on real MNIST digits.

Built once per session (and cached in pytest's cache dir, checked by sha256) until
``python -m train.export`` can be used instead. The model takes raw 0..255 pixels (it starts
with ``Rescaling(1/255)``), is converted to full INT8 with a representative dataset, and its
manifest says ``preprocess: digit`` so camera frames are turned into MNIST-like digits.
"""
from __future__ import annotations

import gzip
import json
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from sdk.bundle import (
    LABELS_FILE,
    MODEL_FILE,
    BundleError,
    InputSpec,
    Manifest,
    OutputSpec,
    Quantization,
    SplitAccuracy,
    load_manifest,
    sha256_file,
    verify_bundle,
    write_manifest,
)

FIXTURE_VERSION = "sdk-fixture-3"
N_TRAIN = 20000
EPOCHS = 3


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX (.gz) file of MNIST into a numpy array."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_mnist(mnist_dir: Path, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    prefix = "train" if split == "train" else "t10k"
    x = read_idx(Path(mnist_dir) / f"{prefix}-images-idx3-ubyte.gz")
    y = read_idx(Path(mnist_dir) / f"{prefix}-labels-idx1-ubyte.gz")
    return x, y


def build_bundle(out_dir: Path, mnist_dir: Path) -> Path:
    """Train, convert to full INT8 and write a bundle into ``out_dir``; returns it."""
    from train._tf import keras, tf

    tf.random.set_seed(0)
    x, y = load_mnist(mnist_dir, "train")
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(x))[:N_TRAIN]
    x = x[idx].astype("float32")[..., None]
    y = y[idx].astype("int64")
    xt, yt = load_mnist(mnist_dir, "test")
    xt = xt[:2000].astype("float32")[..., None]
    yt = yt[:2000]

    model = small_cnn(28)
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x, y, batch_size=128, epochs=EPOCHS, verbose=0)
    float_acc = float(model.evaluate(xt, yt, verbose=0)[1])
    interp = write_int8_bundle(model, x[:200], out_dir, name="lenet-mnist-test", version=FIXTURE_VERSION,
                               accuracy_float=float_acc)
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    in_s, in_z = inp["quantization"]
    correct = 0
    for i in range(len(xt)):
        q = np.clip(np.round(xt[i: i + 1] / in_s + in_z), -128, 127).astype(np.int8)
        interp.set_tensor(inp["index"], q)
        interp.invoke()
        correct += int(np.argmax(interp.get_tensor(out["index"])[0]) == yt[i])
    manifest = load_manifest(out_dir)
    manifest.accuracy_exported = SplitAccuracy(test=correct / len(xt))
    write_manifest(out_dir, manifest)
    return out_dir


def small_cnn(side: int):
    """The fixture's LeNet-like CNN for ``side`` x ``side`` grey digits (raw 0..255 input)."""
    from train._tf import keras

    return keras.Sequential([
        keras.layers.Input((side, side, 1)),
        keras.layers.Rescaling(1.0 / 255),
        keras.layers.Conv2D(16, 5, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 5, activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(96, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ])


def write_int8_bundle(model, calibration: np.ndarray, out_dir: Path, *, name: str, version: str,
                      accuracy_float: float | None = None):
    """Convert ``model`` to full INT8 (calibrated on ``calibration``), write model, labels and manifest
    into ``out_dir``; returns the loaded LiteRT interpreter."""
    from train._tf import tf

    def representative():
        for i in range(len(calibration)):
            yield [calibration[i: i + 1]]

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    tflite = conv.convert()

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MODEL_FILE).write_bytes(tflite)
    labels = [str(i) for i in range(10)]
    (out_dir / LABELS_FILE).write_text("\n".join(labels) + "\n")

    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(out_dir / MODEL_FILE))
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    (in_s, in_z), (out_s, out_z) = inp["quantization"], out["quantization"]
    write_manifest(out_dir, Manifest(
        name=name, version=version, created=datetime.now(timezone.utc).isoformat(timespec="seconds"), target="cpu",
        sha256=sha256_file(out_dir / MODEL_FILE), size_bytes=len(tflite),
        input=InputSpec(shape=[int(v) for v in inp["shape"]], dtype="int8",
                        quantization=Quantization(scale=float(in_s), zero_point=int(in_z)),
                        colour="grey", polarity="light_on_dark", preprocess="digit"),
        output=OutputSpec(shape=[int(v) for v in out["shape"]], dtype="int8",
                          quantization=Quantization(scale=float(out_s), zero_point=int(out_z)), activation="softmax"),
        labels=labels,
        accuracy_float=SplitAccuracy(test=accuracy_float)))
    return interp


def write_float_bundle(model, like: Path, out_dir: Path, *, version: str) -> Path:
    """``model`` converted to a float32 TFLite model (no quantization), as a bundle that claims the
    name, input (shape, colour, preprocessing), labels and output activation of the bundle ``like``."""
    from train._tf import tf

    tflite = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MODEL_FILE).write_bytes(tflite)
    shutil.copy(like / LABELS_FILE, out_dir / LABELS_FILE)
    base = load_manifest(like)
    write_manifest(out_dir, base.model_copy(update={
        "version": version, "sha256": sha256_file(out_dir / MODEL_FILE), "size_bytes": len(tflite),
        "input": base.input.model_copy(update={"dtype": "float32", "quantization": None}),
        "output": base.output.model_copy(update={"dtype": "float32", "quantization": None})}))
    return out_dir


def cached_bundle(cache_root: Path, mnist_dir: Path) -> Path:
    """The bundle from the cache when it is intact, else a freshly built one."""
    out = cache_root / FIXTURE_VERSION
    try:
        verify_bundle(out)
        return out
    except BundleError:
        shutil.rmtree(out, ignore_errors=True)
    tmp = cache_root / f"{FIXTURE_VERSION}.tmp{time.time_ns()}"
    build_bundle(tmp, mnist_dir)
    try:
        tmp.rename(out)
    except OSError:  # another session won the race
        shutil.rmtree(tmp, ignore_errors=True)
    return out


@pytest.fixture(scope="session")
def sdk_bundle(request, tmp_path_factory, mnist_dir) -> Path:
    """Path of a real INT8 MNIST bundle (manifest preprocess=digit). Do not modify it: copy it."""
    cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider
    root = Path(cache.mkdir("sdk-bundle")) if cache is not None else tmp_path_factory.mktemp("sdk-bundle")
    return cached_bundle(root, mnist_dir)


if __name__ == "__main__":  # python tests/sdk_bundle_fixture.py OUT_DIR [MNIST_DIR]
    import sys

    t = time.time()
    repo = Path(__file__).resolve().parents[1]
    out = build_bundle(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else repo.parent / "shared/data/mnist")
    print(json.dumps(json.loads((out / "manifest.json").read_text())["accuracy_exported"]), f"{time.time() - t:.1f}s")

"""Export: every target from a small LeNet-5 trained on real MNIST, checked with real LiteRT.

One run is trained per session (3,000 MNIST images, ~10 s); each target is exported once from it
and the bundles are shared by the tests. Error cases go through the command's ``main`` in-process
(exit codes) and once through a subprocess (no traceback for a user error).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sdk.bundle import LABELS_FILE, MODEL_FILE, verify_bundle
from sdk.errors import ExitCode
from sdk.runtime import backend_name

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "sdk" / "schemas" / "manifest.schema.json"
GATE_PTS = 1.0

pytestmark = pytest.mark.slow


# --------------------------------------------------------------------------- fixtures


_BUNDLES: dict[str, object] = {}

# Options per target: rpi also exercises pruning (cheap at 50 %).
_TARGET_OPTIONS = {"coral": {}, "rpi": {"sparsity": 0.5, "fine_tune_epochs": 1}, "jetson": {}, "cpu": {}}


@pytest.fixture(scope="session")
def exported(small_run, tmp_path_factory):
    """``exported(target)`` -> ExportResult, each target exported once per session."""
    from train.export import export_bundle

    out_root = tmp_path_factory.mktemp("bundles")

    def get(target: str):
        if target not in _BUNDLES:
            _BUNDLES[target] = export_bundle(target, small_run, out_root / target, **_TARGET_OPTIONS[target])
        return _BUNDLES[target]

    return get


def _litert_accuracy(model_path: Path, x: np.ndarray, y: np.ndarray) -> float:
    """Accuracy of a .tflite on uint8 images, with LiteRT directly (independent of train.export.measure)."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(model_path), num_threads=2)
    inp = it.get_input_details()[0]
    batch = 500
    it.resize_tensor_input(inp["index"], [batch, *inp["shape"][1:]], strict=False)
    it.allocate_tensors()
    inp = it.get_input_details()[0]
    out = it.get_output_details()[0]
    scale, zero = inp["quantization"]
    correct = 0
    for start in range(0, len(x), batch):
        chunk = x[start : start + batch]
        n = len(chunk)
        if n < batch:
            chunk = np.concatenate([chunk, np.zeros((batch - n, *chunk.shape[1:]), np.uint8)])
        if inp["dtype"] in (np.uint8, np.int8):
            info = np.iinfo(inp["dtype"])
            feed = np.clip(np.round(chunk.astype(np.float32) / scale) + zero, info.min, info.max).astype(inp["dtype"])
        else:
            feed = chunk.astype(np.float32)
        it.set_tensor(inp["index"], feed)
        it.invoke()
        correct += int((it.get_tensor(out["index"])[:n].argmax(axis=1) == y[start : start + n]).sum())
    return correct / len(x)


# --------------------------------------------------------------------------- registry


def test_target_registry():
    from train.export.targets import TargetSpec, UnknownTargetError, get_target, list_targets, register_target

    assert list_targets() == ["coral", "cpu", "jetson", "rpi"]
    assert list_targets("c*") == ["coral", "cpu"]
    coral = get_target("coral")
    assert coral.static_batch and coral.compiler == "edgetpu_compiler" and coral.io_dtypes == ("uint8", "int8")
    assert "qat" in coral.accepts and "qat" not in get_target("cpu").accepts
    with pytest.raises(UnknownTargetError) as e:
        get_target("corel")
    msg = str(e.value)
    assert "Did you mean 'coral'?" in msg and all(t in msg for t in ("rpi", "jetson", "cpu"))
    with pytest.raises(ValueError, match="already registered"):
        register_target(lambda: TargetSpec(name="cpu", description="dup", artefacts=coral.artefacts))
    # what a target adds beyond its .tflite files, it declares itself: the export knows no target by name
    assert [b.name for b in coral.builders] == ["edgetpu"] and coral.delegate_file == "edgetpu"
    assert [b.name for b in get_target("jetson").builders] == ["gpu_compatibility", "onnx"]
    assert get_target("cpu").builders == () == get_target("rpi").builders
    assert "model.onnx" in get_target("jetson").emits()


# --------------------------------------------------------------------------- every target


@pytest.mark.parametrize("target", ["coral", "rpi", "jetson", "cpu"])
def test_export_target(target, exported, small_run, mnist_test):
    import jsonschema

    from train.export.metadata import read_labels

    result = exported(target)
    bundle = result.bundle_dir
    report = result.report
    assert result.passed, report["gate"]

    # manifest: valid against the JSON schema in the repo, sha256 matches the model
    manifest_json = json.loads((bundle / "manifest.json").read_text())
    jsonschema.validate(manifest_json, json.loads(SCHEMA.read_text()))
    manifest = verify_bundle(bundle)
    assert manifest.target == target
    assert manifest.size_bytes == (bundle / MODEL_FILE).stat().st_size
    for role, name in manifest.extra_files.items():
        assert (bundle / name).is_file(), (role, name)

    # labels: in labels.txt, in the manifest and embedded in the .tflite
    labels = [str(i) for i in range(10)]
    assert (bundle / LABELS_FILE).read_text().split() == labels
    assert manifest.labels == labels
    assert read_labels(bundle / MODEL_FILE) == labels

    # the exported model on the real 10k MNIST test images, run with ai_edge_litert
    acc = _litert_accuracy(bundle / MODEL_FILE, mnist_test.x, mnist_test.y)
    assert manifest.accuracy_float.test > 0.85
    assert acc >= manifest.accuracy_float.test - GATE_PTS / 100
    assert acc == pytest.approx(manifest.accuracy_exported.test, abs=1e-9)

    # what the converter produced is what the manifest says
    from train.export.measure import io_details

    io = io_details((bundle / MODEL_FILE).read_bytes())
    assert manifest.input.shape == io["input"]["shape"] == [1, 28, 28, 1]
    assert manifest.input.dtype == io["input"]["dtype"]
    assert manifest.input.normalization.scale == 1.0 and manifest.input.normalization.offset == 0.0
    assert manifest.input.colour == "grey" and manifest.input.preprocess == "digit"

    # the device side loads it as it is (sdk never imports TensorFlow)
    from sdk.runtime import load_bundle

    loaded = load_bundle(bundle)
    assert loaded.labels == labels

    # report: sizes, gzip, latency, per-class deltas on both splits
    for art in report["artefacts"]:
        assert art["size_bytes"] > 0 and 0 < art["gzip_bytes"]
        assert 0 < art["latency"]["p50_ms"] <= art["latency"]["p95_ms"]
        # the package that ran, not a fixed name
        assert art["latency"]["runtime"] == ("onnxruntime" if art["role"] == "onnx" else backend_name())
        assert set(art["per_class_delta_pts"]) == {"validation", "test"}
        assert set(art["per_class_delta_pts"]["test"]) == set(labels)
    assert (bundle / "export_report.md").read_text().startswith("# Export report")

    if target in ("coral", "rpi"):
        assert manifest.input.dtype == "uint8"
        assert manifest.input.quantization.scale == pytest.approx(1.0)
        assert manifest.input.quantization.zero_point == 0
        assert manifest.output.dtype == "uint8" and manifest.output.quantization is not None
        assert io["input"]["shape_signature"] == [1, 28, 28, 1]  # static batch 1
        assert report["calibration"]["samples"] == 500
        assert report["artefacts"][0]["size_vs_float"] < 0.28
    if target == "coral":
        pf = report["edgetpu_preflight"]
        assert pf["fully_mapped"] and pf["mapped_share"] == 1.0
        if shutil.which("edgetpu_compiler") is None:
            assert manifest.delegate == "none"  # compiler-ready, not compiled: runs on the CPU
            assert report["edgetpu_compiler"]["ran"] is False
            assert "not on PATH" in report["edgetpu_compiler"]["reason"]
        else:  # pragma: no cover - only where Coral's compiler is installed
            assert (bundle / "model_edgetpu.tflite").is_file() and (bundle / "edgetpu_compiler.log").is_file()
            assert manifest.delegate == "edgetpu" and manifest.extra_files["edgetpu"] == "model_edgetpu.tflite"
    if target == "rpi":
        assert manifest.delegate == "xnnpack" and manifest.num_threads == 4
        sp = report["sparsity"]
        assert sp["overall"] == pytest.approx(0.5, abs=0.02)
        per_layer = {layer["layer"]: layer["sparsity"] for layer in sp["layers"]}
        targets = report["optimizations"]["pruning"]["layer_targets"]
        assert set(targets) == {"conv2", "fc1", "fc2"}  # conv1 (150 weights) and logits (840) stay dense
        assert per_layer["conv1"] == 0 and per_layer["logits"] == 0
        assert all(per_layer[name] == pytest.approx(t, abs=0.02) for name, t in targets.items())
        assert manifest.sparsity == sp["overall"]
        # the zeros survive INT8 conversion and make the file compress better than the unpruned one
        assert report["artefacts"][0]["weight_sparsity"] > 0.45
        assert report["artefacts"][0]["gzip_bytes"] < 0.8 * exported("coral").report["artefacts"][0]["gzip_bytes"]
    if target == "jetson":
        assert manifest.input.dtype == "float32" and manifest.delegate == "gpu"
        assert report["artefacts"][0]["quantization"] == "float16"
        assert report["gpu_compatibility"]["compatible"], report["gpu_compatibility"]["analyzer_output"]
        onnx = report["onnx"]
        assert onnx["ok"] and onnx["max_abs_diff"] < 1e-4 and (bundle / "model.onnx").is_file()
        assert "trtexec --onnx=model.onnx" in onnx["trtexec"]
        assert manifest.extra_files["onnx"] == "model.onnx"
    if target == "cpu":
        assert manifest.input.dtype == "float32" and manifest.num_threads == 4
        dyn = report["artefacts"][1]
        assert dyn["quantization"] == "dynamic_range" and (bundle / dyn["file"]).is_file()
        assert dyn["size_bytes"] < 0.35 * report["artefacts"][0]["size_bytes"]
        assert _litert_accuracy(bundle / dyn["file"], mnist_test.x, mnist_test.y) >= manifest.accuracy_float.test - GATE_PTS / 100


# --------------------------------------------------------------------------- optimize helpers


def test_qat_and_clustering(small_run):
    """QAT and clustering on a tiny budget: the mechanics (clusters, zeros kept, INT8 model runs)."""
    from train import export as opt  # the package's public API
    from train.runs import load_run

    run = load_run(small_run)
    splits = run.splits()
    train = splits["train"]
    pruned = opt.prune(run.model, train, sparsity=0.5, epochs=1, min_steps=20)
    clustered = opt.cluster(pruned, train, clusters=8, epochs=1, min_steps=20)
    assert all(n <= 8 + 1 for n in opt.distinct_weights(clustered).values() if n > 1)  # +1: the preserved zero
    assert opt.sparsity_report(clustered)["overall"] >= 0.45
    qat = opt.quantize_aware(clustered, train, epochs=1, min_steps=20, preserve_clusters=True)
    tfl = opt.convert(qat, "full_int8", representative=opt.calibration_set(train, 100))
    io = opt.io_details(tfl)
    assert io["input"]["dtype"] == "uint8" and io["output"]["dtype"] == "uint8"
    val = splits["val"]
    acc = float((opt.predict_tflite(tfl, val.x[:2000]).argmax(1) == val.y[:2000]).mean())
    assert acc > 0.8
    # the original model is untouched
    assert opt.sparsity_report(run.model)["overall"] < 0.01


def test_batchnorm_recalibration_follows_the_weights():
    """After fine-tuning moves the weights, BN moving statistics must match them again."""
    from train._tf import keras
    from train.export.compress import recalibrate_batchnorm

    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(4, 3, kernel_initializer="ones")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Dropout(0.5)(x)
    model = keras.Model(inputs, x)
    images = np.random.default_rng(0).integers(0, 256, (256, 8, 8, 1), dtype=np.uint8)
    conv_out = keras.Model(inputs, model.layers[2].output)(images.astype(np.float32)).numpy()
    bn = model.get_layer("bn")
    assert np.allclose(bn.moving_mean.numpy(), 0)  # stale: the weights moved, the averages did not
    assert recalibrate_batchnorm(model, images, batches=60) == 1
    assert np.allclose(bn.moving_mean.numpy(), conv_out.mean(axis=(0, 1, 2)), rtol=0.05)
    assert bn.momentum == 0.99 and model.layers[4].rate == 0.5  # restored


def test_calibration_set_is_stratified_and_refuses_empty(mnist_dir):
    from train.data import load_dataset
    from train.export import CalibrationError
    from train.export.conversion import calibration_set

    ds = load_dataset(str(mnist_dir), split="test")
    x = calibration_set(ds, 500, seed=1)
    assert x.shape == (500, 28, 28, 1) and x.dtype == np.uint8
    with pytest.raises(CalibrationError, match="empty"):
        calibration_set(ds, 0)
    with pytest.raises(CalibrationError, match="empty"):
        calibration_set(ds.subset(np.arange(0)), 10)


# --------------------------------------------------------------------------- Edge TPU pre-flight


def test_preflight_flags_what_the_edge_tpu_cannot_run():
    from train._tf import keras, tf
    from train.export.conversion import convert
    from train.export.preflight import preflight

    inputs = keras.Input((16, 16, 1))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    x = keras.layers.Lambda(lambda t: tf.math.sin(t))(x)  # SIN: not an Edge TPU op
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(3, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(0)
    calib = rng.integers(0, 256, (20, 16, 16, 1), dtype=np.uint8)

    # INT8 with a float fallback: SIN stays float between DEQUANTIZE / QUANTIZE
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([calib[i : i + 1].astype(np.float32)] for i in range(len(calib)))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    report = preflight(conv.convert())
    flagged = {o.op for o in report.flagged()}
    assert "SIN" in flagged
    sin = next(o for o in report.ops if o.op == "SIN")
    assert not sin.supported and not sin.maps and "not an Edge TPU op" in " ".join(sin.reasons)
    assert not report.fully_mapped and report.mapped < report.total
    # everything after the first unmapped op stays on the CPU, even supported ops
    first = report.first_unmapped
    assert all(not o.maps for o in report.ops[first.index :])
    assert "SIN" in report.to_markdown()

    # a float model with a dynamic batch: nothing maps, each op says why
    report = preflight(convert(model, "float32", static_batch=False))
    assert report.mapped == 0
    assert any("dynamic shape" in r for o in report.ops for r in o.reasons)
    assert any("not 8-bit quantized" in r for o in report.ops for r in o.reasons)

    with pytest.raises(ValueError, match="not a TFLite"):
        preflight(b"definitely not a flatbuffer")


# --------------------------------------------------------------------------- bad input


def _main(args, capsys):
    from train.export.__main__ import main

    code = main(args)
    return code, capsys.readouterr().err


def test_unknown_target_lists_valid_ones_without_traceback(small_run):
    proc = subprocess.run(
        [sys.executable, "-m", "train.export", "--target", "corel", "--run", str(small_run)],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "Did you mean 'coral'?" in proc.stderr
    for t in ("coral", "rpi", "jetson", "cpu"):
        assert t in proc.stderr
    assert "accepts:" in proc.stderr


def test_bad_arguments(small_run, capsys):
    code, err = _main(["--target", "cpu", "--run", str(small_run), "--qat"], capsys)
    assert code == ExitCode.USAGE and "does not accept --qat" in err
    code, err = _main(["--target", "coral", "--run", str(small_run), "--sparsity", "1.5"], capsys)
    assert code == ExitCode.USAGE and "--sparsity" in err
    code, err = _main(["--target", "coral", "--run", str(small_run), "--io-dtype", "float32"], capsys)
    assert code == ExitCode.USAGE and "uint8 or int8" in err
    code, err = _main(["--run", str(small_run)], capsys)
    assert code == ExitCode.USAGE and "--target is required" in err


def test_missing_run(tmp_path, capsys):
    code, err = _main(["--target", "coral", "--run", str(tmp_path / "nope")], capsys)
    assert code == ExitCode.BUNDLE and "not found" in err
    code, err = _main(["--target", "coral", "--runs-dir", str(tmp_path)], capsys)
    assert code == ExitCode.BUNDLE and "no training run found" in err
    (tmp_path / "half").mkdir()
    code, err = _main(["--target", "coral", "--run", str(tmp_path / "half")], capsys)
    assert code == ExitCode.BUNDLE and "missing" in err


def test_unreadable_model(small_run, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(small_run, broken, ignore=shutil.ignore_patterns("bundles"))
    (broken / "model.keras").write_bytes(b"this is not a keras file")
    code, err = _main(["--target", "coral", "--run", str(broken)], capsys)
    assert code == ExitCode.MODEL and "cannot read the model" in err


def test_empty_calibration_set(small_run, tmp_path, capsys):
    code, err = _main(["--target", "coral", "--run", str(small_run), "--out", str(tmp_path), "--calibration-samples", "0"], capsys)
    assert code == ExitCode.INPUT and "calibration set is empty" in err


def test_accuracy_gate_fails_with_figures(small_run, tmp_path, capsys):
    """One calibration image gives INT8 activation ranges that clip: the gate must catch it."""
    out = tmp_path / "gate"
    code, err = _main(["--target", "rpi", "--run", str(small_run), "--out", str(out), "--calibration-samples", "1"], capsys)
    assert code == ExitCode.GATE
    assert "accuracy gate failed" in err and "vs float" in err and "pts" in err
    report = json.loads((out / "export_report.json").read_text())
    assert report["gate"]["passed"] is False and report["gate"]["failures"]
    assert "FAILED" in (out / "export_report.md").read_text()


def test_a_library_value_error_is_a_bug_not_bad_input(small_run, tmp_path, monkeypatch):
    """A ValueError from code that is not ours propagates (exit 1 with its traceback), never exit 5."""
    from train.export import bundle
    from train.export.__main__ import main

    def broken(*args, **kwargs):
        raise ValueError("something inside a library went wrong")

    monkeypatch.setattr(bundle, "calibration_set", broken)
    with pytest.raises(ValueError, match="inside a library"):
        main(["--target", "rpi", "--run", str(small_run), "--out", str(tmp_path / "rpi")])

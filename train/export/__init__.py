"""Optimize a trained run and emit a model bundle for a device.

    python -m train.export --target coral                      # the latest run under runs/
    python -m train.export --target rpi --run runs/X --sparsity 0.8 --threads 4
    python -m train.export --target jetson --out bundles/jetson
    python -m train.export --list-targets

The library call is :func:`export_bundle` with the same argument names. A bundle is
``model.tflite`` (labels embedded as metadata), ``labels.txt``, ``manifest.json`` (the
``sdk.bundle.Manifest`` contract), ``export_report.json`` and ``export_report.md``, plus what the
target adds (ONNX for Jetson, the Edge TPU pre-flight report and compiler output for Coral, the
dynamic-range variant for CPU). See docs/bundle.md.

Exit codes: 0 ok, 2 bad arguments / unknown target / option the target does not accept,
3 run not found or incomplete, 4 model unreadable, 5 data or calibration set unusable,
6 an artefact fell below the accuracy gate (the bundle is still written, with the figures),
7 the target could not produce an artefact it promises (Jetson's checked ONNX, Coral's compiled
model when edgetpu_compiler is on PATH): no manifest.json is written, so the folder is no bundle,
1 anything else (a bug: the traceback is shown).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from sdk.bundle import (
    LABELS_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    InputSpec,
    Manifest,
    OutputSpec,
    Quantization,
    SplitAccuracy,
    sha256_file,
    write_manifest,
)
from train.export.compress import CalibrationError, gzip_size
from train.export.targets import TargetSpec, UnknownTargetError, describe_targets, get_target, list_targets
from train.runs import Run, RunError, load_run

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_RUN = 3
EXIT_MODEL = 4
EXIT_DATA = 5
EXIT_GATE = 6
EXIT_ARTEFACT = 7

EXIT_CODES_HELP = """Exit codes:
  0  ok
  1  internal error (a bug: the traceback is shown)
  2  bad arguments, unknown target, or an option the target does not accept
  3  run not found or incomplete
  4  model unreadable
  5  data or calibration set unusable
  6  accuracy gate failed (the bundle is still written, with the figures)
  7  the target could not produce an artefact it promises (jetson: the ONNX model, checked against
     Keras; coral: the compiled model, when edgetpu_compiler is on PATH); no manifest.json is written"""

REPORT_JSON = "export_report.json"
REPORT_MD = "export_report.md"
DEFAULT_CALIBRATION_SAMPLES = 500
DEFAULT_MAX_ACCURACY_DROP = 1.0
DEFAULT_THREADS = 4
ONNX_CHECK_SAMPLES = 256


class ExportError(ValueError):
    """A user error during export; ``exit_code`` is what the CLI exits with."""

    exit_code = EXIT_USAGE


class OptionError(ExportError):
    """An option the target does not accept, or a value out of range."""


class ModelLoadError(ExportError):
    """The model file exists but cannot be read."""

    exit_code = EXIT_MODEL


class DataProblem(ExportError):
    """The data the export needs (splits, calibration set) is missing or unusable."""

    exit_code = EXIT_DATA


class TargetArtefactError(ExportError):
    """The target could not produce an artefact it promises: Jetson's ONNX (converted and checked
    against Keras), Coral's ``*_edgetpu.tflite`` when ``edgetpu_compiler`` is on PATH.

    Raised before the manifest is written: the folder keeps the partial output (and the compiler
    log) for inspection, but without ``manifest.json`` it is no bundle.
    """

    exit_code = EXIT_ARTEFACT

    def __init__(self, target: str, artefact: str, reason: str, remedy: str):
        self.target, self.artefact, self.reason, self.remedy = target, artefact, reason, remedy
        self.bundle_dir: Path | None = None  # set by export_bundle
        super().__init__(f"target {target!r}: could not produce {artefact}: {reason}")

    def __str__(self) -> str:
        msg = f"{self.args[0]}\n  what to do: {self.remedy}"
        if self.bundle_dir is not None:
            msg += f"\n  no bundle written: {self.bundle_dir} holds the partial output and no {MANIFEST_FILE}"
        return msg


@dataclass
class ExportResult:
    """What :func:`export_bundle` produced."""

    bundle_dir: Path
    manifest: Manifest
    report: dict[str, Any]
    failures: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


# --------------------------------------------------------------------------- inputs


def _check_options(spec: TargetSpec, *, sparsity, qat, clustering, calibration_samples, io_dtype, threads, max_accuracy_drop,
                   preprocess=None) -> str:
    """Validate options against the target's table; return the I/O dtype to use."""
    given = {
        "sparsity": sparsity is not None,
        "qat": bool(qat),
        "clustering": clustering is not None,
        "calibration_samples": calibration_samples is not None,
        "io_dtype": io_dtype is not None,
    }
    refused = [k for k, v in given.items() if v and k not in spec.accepts]
    if refused:
        opts = ", ".join("--" + k.replace("_", "-") for k in refused)
        raise OptionError(
            f"target {spec.name!r} does not accept {opts}. What each target accepts:\n{describe_targets()}"
        )
    if sparsity is not None and not 0 < sparsity < 1:
        raise OptionError(f"--sparsity must be between 0 and 1 (exclusive), e.g. 0.8; got {sparsity}")
    if clustering is not None and (not isinstance(clustering, int) or clustering < 2 or clustering > 256):
        raise OptionError(f"--clustering must be an integer number of clusters in 2..256; got {clustering}")
    if threads is not None and threads < 1:
        raise OptionError(f"--threads must be >= 1; got {threads}")
    if preprocess not in (None, "plain", "digit"):
        raise OptionError(f"--preprocess must be 'plain' or 'digit'; got {preprocess!r}")
    if max_accuracy_drop < 0:
        raise OptionError(f"--max-accuracy-drop is in percentage points and must be >= 0; got {max_accuracy_drop}")
    dtype = io_dtype or spec.io_dtypes[0]
    if dtype not in spec.io_dtypes:
        raise OptionError(f"target {spec.name!r} takes --io-dtype {' or '.join(spec.io_dtypes)}; got {dtype!r}")
    return dtype


def _load_model(path: Path):
    from train._tf import keras

    try:
        return keras.models.load_model(path)
    except Exception as e:  # corrupt zips, truncated h5, missing custom objects: all "unreadable"
        raise ModelLoadError(f"{path}: cannot read the model ({type(e).__name__}: {e})") from e


def open_source(run: str | Path | Run | None, data: str | None = None, runs_dir: str | Path = "runs") -> Run:
    """The run to export: a run directory (default: the latest under ``runs_dir``), a ``Run``, or a
    saved model file (``.keras``/``.h5``) with ``data`` naming the dataset to calibrate and judge on.

    The returned run's ``model`` is loaded (``ModelLoadError`` when unreadable).
    """
    if isinstance(run, Run):
        r = run
    else:
        p = Path(run) if run is not None else None
        if p is not None and p.is_file() and p.suffix in (".keras", ".h5"):
            r = _run_from_model_file(p, data)
        else:
            if p is not None and not p.exists():
                raise RunError(f"{p}: run directory not found (pass a run directory from `python -m train.train`, "
                               "or a .keras file with --data)")
            r = load_run(p, runs_dir=runs_dir)
            if data is not None:
                r.config = r.config.model_copy(update={"data": data, "test_data": None})
    if "model" not in r.__dict__:
        r.__dict__["model"] = _load_model(r.model_path)
    return r


def _run_from_model_file(path: Path, data: str | None) -> Run:
    from train.config import TrainConfig

    parent = path.parent
    if (parent / "config.json").is_file() and (parent / "run.json").is_file():
        r = load_run(parent)
        r.__dict__["model"] = _load_model(path)
        if data is not None:
            r.config = r.config.model_copy(update={"data": data, "test_data": None})
        return r
    if data is None:
        raise OptionError(f"{path} is a bare model file: pass --data SPEC (the dataset to calibrate and evaluate on)")
    model = _load_model(path)
    from train.data import load_dataset
    from train.data.pipeline import detect_polarity

    try:
        probe = load_dataset(data, split="train")
    except ValueError as e:
        raise DataProblem(f"{data}: {e}") from e
    shape = [int(d) for d in model.input_shape[1:]]
    info = {
        "input_shape": shape,
        "class_names": probe.class_names,
        "colour": "rgb" if shape[-1] == 3 else "grey",
        "polarity": detect_polarity(probe.x[:2000]),
    }
    config = TrainConfig(data=data, image_size=shape[:2] if list(probe.image_shape[:2]) != shape[:2] else None,
                         colour="rgb" if shape[-1] == 3 else "grey", run_name=path.stem)
    r = Run(path=parent, config=config, info=info)
    r.__dict__["model"] = model
    return r


def _splits(run: Run) -> dict:
    try:
        splits = run.splits()
    except (OSError, ValueError) as e:
        raise DataProblem(f"cannot rebuild the data splits of {run.path} ({run.config.data}): {e}") from e
    if splits.get("val") is None or len(splits["val"]) == 0:
        raise DataProblem(f"{run.config.data}: the validation split is empty")
    return splits


# --------------------------------------------------------------------------- measuring


def predict_keras(model, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Keras scores for uint8 images, converted to float32 a chunk at a time (big inputs stay small)."""
    out = []
    for start in range(0, len(x), 4096):
        chunk = x[start : start + 4096].astype(np.float32)
        out.append(np.asarray(model.predict(chunk, batch_size=batch_size, verbose=0), dtype=np.float32))
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def _accuracy_block(y: np.ndarray, pred: np.ndarray, num_classes: int) -> dict:
    per_class = []
    for c in range(num_classes):
        mask = y == c
        per_class.append(float((pred[mask] == c).mean()) if mask.any() else None)
    return {"n": int(len(y)), "accuracy": float((pred == y).mean()), "per_class": per_class}


def _per_class_delta(base: dict, other: dict, labels: list[str]) -> dict[str, float | None]:
    out = {}
    for lab, a, b in zip(labels, base["per_class"], other["per_class"]):
        out[lab] = None if a is None or b is None else round((b - a) * 100, 2)
    return out


def _evaluate(predict, splits: dict, num_classes: int) -> dict[str, dict]:
    res = {}
    for key, name in (("val", "validation"), ("test", "test")):
        ds = splits.get(key)
        if ds is None or ds.y is None or len(ds) == 0:
            continue
        res[name] = _accuracy_block(ds.y, predict(ds.x).argmax(axis=1), num_classes)
    return res


def _accuracies(model, splits: dict, num_classes: int) -> dict[str, float]:
    return {k: v["accuracy"] for k, v in _evaluate(lambda x: predict_keras(model, x), splits, num_classes).items()}


def _split_accuracy(ev: dict[str, dict]) -> SplitAccuracy:
    return SplitAccuracy(
        validation=ev["validation"]["accuracy"] if "validation" in ev else None,
        test=ev["test"]["accuracy"] if "test" in ev else None,
    )


# --------------------------------------------------------------------------- the bundle


def export_bundle(
    target: str,
    run: str | Path | Run | None = None,
    out: str | Path | None = None,
    *,
    sparsity: float | None = None,
    qat: bool = False,
    clustering: int | None = None,
    calibration_samples: int | None = None,
    max_accuracy_drop: float = DEFAULT_MAX_ACCURACY_DROP,
    threads: int = DEFAULT_THREADS,
    io_dtype: str | None = None,
    data: str | None = None,
    fine_tune_epochs: int = 2,
    name: str | None = None,
    version: str | None = None,
    preprocess: str | None = None,
    runs_dir: str | Path = "runs",
    splits: dict | None = None,
    latency_runs: int = 200,
) -> ExportResult:
    """Optimize ``run`` for ``target`` and write a bundle into ``out``.

    ``run``: a run directory (default: the latest under ``runs_dir``), a loaded ``Run``, or a
    ``.keras`` file (then ``data`` names the dataset). ``out`` defaults to
    ``<run>/bundles/<target>``. ``splits`` (``{"train", "val", "test"}`` Datasets) overrides the
    run's own rebuilt splits. ``sparsity``/``clustering``/``qat`` switch on pruning, weight
    clustering and quantization-aware training (in that order), each fine-tuned for
    ``fine_tune_epochs`` on the training split. ``max_accuracy_drop`` is in percentage points:
    any artefact more than that below the float model on a split is a gate failure, listed in
    ``ExportResult.failures`` (the bundle is written either way). ``preprocess`` ('plain' or
    'digit') goes into the manifest; by default 'digit' for MNIST-like digit sets.

    Raises ``UnknownTargetError``/``OptionError`` (bad arguments), ``RunError`` (no such run),
    ``ModelLoadError``, ``DataProblem`` / ``CalibrationError`` (unusable data),
    ``TargetArtefactError`` (the target could not produce an artefact it promises; no manifest).
    """
    t_start = time.perf_counter()
    spec = get_target(target)
    io_dtype = _check_options(
        spec, sparsity=sparsity, qat=qat, clustering=clustering, calibration_samples=calibration_samples,
        io_dtype=io_dtype, threads=threads, max_accuracy_drop=max_accuracy_drop, preprocess=preprocess,
    )
    n_calib = DEFAULT_CALIBRATION_SAMPLES if calibration_samples is None else calibration_samples
    if spec.full_int8 and n_calib < 1:
        raise CalibrationError(f"the calibration set is empty: --calibration-samples must be >= 1, got {n_calib}")
    source = open_source(run, data=data, runs_dir=runs_dir)

    from train.export import compress as opt
    from train.export.metadata import embed_labels

    labels = source.class_names
    float_model = source.model
    if splits is None:
        splits = _splits(source)
    train = splits.get("train")
    num_classes = len(labels)
    model_out = int(float_model.output_shape[-1])
    if model_out != num_classes:
        raise ModelLoadError(f"{source.model_path}: the model has {model_out} outputs but the run lists {num_classes} classes")
    seed = source.config.seed
    bundle = Path(out) if out is not None else source.path / "bundles" / spec.name
    bundle.mkdir(parents=True, exist_ok=True)
    meas_threads = opt.measuring_threads(threads)

    report: dict[str, Any] = {
        "target": spec.name,
        "target_description": spec.description,
        "source_run": str(source.path),
        "model": source.config.model,
        "data": source.config.data,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "options": {
            "sparsity": sparsity, "qat": qat, "clustering": clustering, "calibration_samples": n_calib if spec.full_int8 else None,
            "io_dtype": io_dtype, "threads": threads, "max_accuracy_drop": max_accuracy_drop, "fine_tune_epochs": fine_tune_epochs,
        },
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "measuring_threads": meas_threads},
        "labels": labels,
    }

    # 0. The calibration set first: an unusable one should fail before any fine-tuning.
    calib = None
    if spec.full_int8:
        try:
            calib = opt.calibration_set(train, n_calib, seed=seed)
        except CalibrationError:
            raise
        except ValueError as e:
            raise CalibrationError(f"cannot draw the calibration set: {e}") from e
        report["calibration"] = {"samples": int(len(calib)), "from": "training split, stratified by class", "seed": seed}

    # 1. The float model, the reference every artefact is judged against.
    float_eval = _evaluate(lambda x: predict_keras(float_model, x), splits, num_classes)
    report["float"] = {
        "accuracy": {k: v["accuracy"] for k, v in float_eval.items()},
        "n": {k: v["n"] for k, v in float_eval.items()},
        "per_class": {k: v["per_class"] for k, v in float_eval.items()},
    }
    reference = opt.convert(float_model, "float32", static_batch=spec.static_batch)
    report["float"]["tflite_float32_bytes"] = len(reference)
    report["float"]["tflite_float32_gzip_bytes"] = opt.gzip_size(reference)
    report["float"]["params"] = int(float_model.count_params())

    # 2. Optimizations, in order: prune -> cluster -> QAT.
    model = float_model
    steps: dict[str, Any] = {}
    if sparsity is not None or clustering is not None or qat:
        if train is None or len(train) == 0:
            raise DataProblem(f"{source.config.data}: the training split is empty; pruning/clustering/QAT need it to fine-tune")
    if sparsity is not None:
        t0 = time.perf_counter()
        model = opt.prune(model, train, sparsity=sparsity, epochs=fine_tune_epochs, seed=seed)
        steps["pruning"] = {"target_sparsity": sparsity, "schedule": "PolynomialDecay(0 -> target, first 70% of steps)",
                            "layer_targets": opt.layer_sparsity_targets(float_model, sparsity),
                            "fine_tune_epochs": fine_tune_epochs, "seconds": round(time.perf_counter() - t0, 1),
                            "sparsity": opt.sparsity_report(model)["overall"],
                            "float_accuracy": _accuracies(model, splits, num_classes)}
    if clustering is not None:
        t0 = time.perf_counter()
        model = opt.cluster(model, train, clusters=clustering, epochs=max(1, fine_tune_epochs // 2),
                            preserve_sparsity=sparsity is not None, seed=seed)
        steps["clustering"] = {"clusters": clustering, "preserve_sparsity": sparsity is not None,
                               "distinct_weights": opt.distinct_weights(model), "seconds": round(time.perf_counter() - t0, 1),
                               "float_accuracy": _accuracies(model, splits, num_classes)}
    sparsity_info = opt.sparsity_report(model)
    report["sparsity"] = sparsity_info
    if qat:
        t0 = time.perf_counter()
        model = opt.quantize_aware(model, train, epochs=max(1, fine_tune_epochs // 2), preserve_sparsity=sparsity is not None,
                                   preserve_clusters=clustering is not None, seed=seed)
        steps["qat"] = {"epochs": max(1, fine_tune_epochs // 2), "seconds": round(time.perf_counter() - t0, 1)}
    report["optimizations"] = steps

    # 3. Convert each artefact, embed the labels, measure it. A manifest and reports left by an
    # earlier export describe the files about to be replaced: gone first, so a failure from here on
    # never leaves a folder that looks like a finished bundle.
    for stale in (MANIFEST_FILE, REPORT_JSON, REPORT_MD):
        (bundle / stale).unlink(missing_ok=True)
    artefacts: list[dict[str, Any]] = []
    primary_bytes = b""
    primary_io: dict = {}
    for art in spec.artefacts:
        tfl = opt.convert(model, art.quantization, representative=calib, io_dtype=io_dtype, static_batch=spec.static_batch)
        tfl = embed_labels(tfl, labels)
        (bundle / art.filename).write_bytes(tfl)
        ev = _evaluate(lambda x, b=tfl: opt.predict_tflite(b, x, num_threads=meas_threads), splits, num_classes)
        details = opt.io_details(tfl)
        sample = splits["val"].x[:1]
        entry = {
            "file": art.filename,
            "role": art.role,
            "quantization": art.quantization,
            "description": art.description,
            "size_bytes": len(tfl),
            "gzip_bytes": opt.gzip_size(tfl),
            "size_vs_float": round(len(tfl) / len(reference), 4),
            "weight_sparsity": opt.tflite_weight_sparsity(tfl),
            "input": details["input"],
            "output": details["output"],
            "accuracy": {k: v["accuracy"] for k, v in ev.items()},
            "per_class_delta_pts": {k: _per_class_delta(float_eval[k], v, labels) for k, v in ev.items()},
            "latency": opt.latency_tflite(tfl, sample, num_threads=meas_threads, runs=latency_runs),
        }
        artefacts.append(entry)
        if art.role == "model":
            primary_bytes, primary_io, primary_eval = tfl, details, ev

    extra_files: dict[str, str] = {a["role"]: a["file"] for a in artefacts if a["role"] != "model"}

    # 4. Target extras. An artefact the target promises but cannot produce fails the export here,
    # before the manifest.
    try:
        if spec.gpu_check:
            from train.export.targets.jetson import gpu_compatibility

            report["gpu_compatibility"] = gpu_compatibility(primary_bytes)
            (bundle / "gpu_compatibility.txt").write_text(report["gpu_compatibility"]["analyzer_output"])
            extra_files["gpu_compatibility"] = "gpu_compatibility.txt"
        if spec.onnx:
            from train.export.targets.jetson import ONNX_FILE, export_onnx, onnx_runner

            onnx_path = bundle / ONNX_FILE
            sample = splits["val"].x[:ONNX_CHECK_SAMPLES]
            report["onnx"] = export_onnx(model, onnx_path, sample, predict_keras(model, sample))
            extra_files["onnx"] = ONNX_FILE  # export_onnx raises unless the file is there and checked
            predict, latency = onnx_runner(onnx_path)
            ev = _evaluate(predict, splits, num_classes)
            artefacts.append({
                "file": ONNX_FILE, "role": "onnx", "quantization": "float32", "description": "ONNX for TensorRT (tf2onnx)",
                "size_bytes": onnx_path.stat().st_size, "gzip_bytes": opt.gzip_size(onnx_path.read_bytes()),
                "size_vs_float": round(onnx_path.stat().st_size / len(reference), 4),
                "accuracy": {k: v["accuracy"] for k, v in ev.items()},
                "per_class_delta_pts": {k: _per_class_delta(float_eval[k], v, labels) for k, v in ev.items()},
                "latency": latency(splits["val"].x[:1], runs=latency_runs),
            })
        if spec.preflight == "edgetpu":
            from train.export.preflight import preflight
            from train.export.targets.coral import run_edgetpu_compiler

            pf = preflight(primary_bytes)
            compiler = run_edgetpu_compiler(bundle / spec.primary.filename, bundle, spec.compiler or "edgetpu_compiler")
            pf.compiler = "ran" if compiler["ran"] else compiler["reason"]
            report["edgetpu_preflight"] = pf.to_dict()
            report["edgetpu_compiler"] = compiler
            (bundle / "edgetpu_preflight.md").write_text(pf.to_markdown())
            extra_files["edgetpu_preflight"] = "edgetpu_preflight.md"
            if compiler.get("model"):
                extra_files["edgetpu"] = compiler["model"]
            if compiler.get("log"):
                extra_files["edgetpu_compiler_log"] = compiler["log"]
    except TargetArtefactError as e:
        e.bundle_dir = bundle
        raise
    report["artefacts"] = artefacts

    # 5. The accuracy gate.
    failures = []
    for a in artefacts:
        for split, acc in a["accuracy"].items():
            base = report["float"]["accuracy"][split]
            drop = (base - acc) * 100
            if drop > max_accuracy_drop + 1e-9:
                failures.append({"file": a["file"], "split": split, "float": base, "exported": acc, "drop_pts": round(drop, 3)})
    report["gate"] = {"max_accuracy_drop_pts": max_accuracy_drop, "passed": not failures, "failures": failures}
    report["seconds"] = round(time.perf_counter() - t_start, 1)

    # 6. Manifest, labels, reports.
    (bundle / LABELS_FILE).write_text("\n".join(labels) + "\n")
    extra_files["report"] = REPORT_JSON
    extra_files["report_md"] = REPORT_MD
    manifest = _manifest(source, spec, bundle, name=name, version=version, io=primary_io, labels=labels,
                         float_eval=float_eval, exported_eval=primary_eval, sparsity=sparsity_info["overall"],
                         threads=threads, extra_files=extra_files, preprocess=preprocess)
    write_manifest(bundle, manifest)
    report["manifest"] = json.loads(manifest.model_dump_json())
    (bundle / REPORT_JSON).write_text(json.dumps(report, indent=2) + "\n")
    (bundle / REPORT_MD).write_text(report_markdown(report))
    logger.info("bundle written to %s (%s)", bundle, "gate passed" if not failures else f"{len(failures)} gate failure(s)")
    return ExportResult(bundle_dir=bundle, manifest=manifest, report=report, failures=failures)


def _default_preprocess(info: dict, labels: list[str], colour: str) -> str:
    """'digit' for MNIST-like digit sets (grey, light ink on dark, classes 0-9), else 'plain'."""
    if info.get("preprocess"):
        return info["preprocess"]
    digits = labels == [str(i) for i in range(10)]
    return "digit" if digits and colour == "grey" and info.get("polarity") == "light_on_dark" else "plain"


def _manifest(source: Run, spec: TargetSpec, bundle: Path, *, name, version, io, labels, float_eval, exported_eval,
              sparsity, threads, extra_files, preprocess=None) -> Manifest:
    def quant(d):
        q = d["quantization"]
        return Quantization(scale=q["scale"], zero_point=q["zero_point"]) if q and d["dtype"] in ("int8", "uint8") else None

    data_name = Path(str(source.config.data).rstrip("/")).stem or str(source.config.data)
    model_path = bundle / MODEL_FILE
    info = source.info
    colour = info.get("colour") or ("rgb" if io["input"]["shape"][-1] == 3 else "grey")
    inp = InputSpec(
        shape=io["input"]["shape"],
        dtype=io["input"]["dtype"],
        quantization=quant(io["input"]),
        colour=colour,
        polarity=info.get("polarity", "any"),
        preprocess=preprocess or _default_preprocess(info, labels, colour),
    )
    outp = OutputSpec(shape=io["output"]["shape"], dtype=io["output"]["dtype"], quantization=quant(io["output"]), activation="softmax")
    return Manifest(
        name=name or f"{source.config.model}-{data_name}",
        version=version or source.path.name,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        target=spec.name,
        model_file=MODEL_FILE,
        sha256=sha256_file(model_path),
        size_bytes=model_path.stat().st_size,
        gzip_bytes=gzip_size(model_path.read_bytes()),
        input=inp,
        output=outp,
        labels=labels,
        accuracy_float=_split_accuracy(float_eval),
        accuracy_exported=_split_accuracy(exported_eval),
        sparsity=sparsity,
        # An uncompiled Edge TPU model runs on the CPU; the Edge TPU delegate needs *_edgetpu.tflite.
        delegate="none" if spec.delegate == "edgetpu" and "edgetpu" not in extra_files else spec.delegate,
        num_threads=threads if spec.records_threads else None,
        source_run=str(source.path),
        extra_files=extra_files,
    )


# --------------------------------------------------------------------------- report


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.2f}%"


def report_markdown(report: dict) -> str:
    """A short human-readable export report."""
    fl = report["float"]
    lines = [
        f"# Export report: {report['model']} -> {report['target']}",
        "",
        f"Run `{report['source_run']}`, data `{report['data']}`, written {report['created']}.",
        f"Options: {', '.join(f'{k}={v}' for k, v in report['options'].items() if v not in (None, False))}.",
        "",
        "| artefact | quantization | size | gzip | x float | val acc | test acc | p50 ms | p95 ms |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| Keras float (reference) | float32 | {fl['tflite_float32_bytes']:,} (tflite) | {fl['tflite_float32_gzip_bytes']:,} | 1.00 | "
        f"{_pct(fl['accuracy'].get('validation'))} | {_pct(fl['accuracy'].get('test'))} | | |",
    ]
    for a in report["artefacts"]:
        lat = a.get("latency", {})
        lines.append(
            f"| {a['file']} | {a['quantization']} | {a['size_bytes']:,} | {a['gzip_bytes']:,} | {a['size_vs_float']:.2f} | "
            f"{_pct(a['accuracy'].get('validation'))} | {_pct(a['accuracy'].get('test'))} | "
            f"{lat.get('p50_ms', '-')} | {lat.get('p95_ms', '-')} |"
        )
    lines += ["", f"Latency: batch 1, {report['machine']['measuring_threads']} thread(s) on this host ({report['machine']['platform']})."]
    sp = report.get("sparsity", {})
    lines += ["", f"Sparsity (Conv/Dense kernels): {sp.get('overall', 0):.1%} overall; " +
              ", ".join(f"{layer['layer']} {layer['sparsity']:.1%}" for layer in sp.get("layers", []))]
    for step, info in report.get("optimizations", {}).items():
        acc = info.get("float_accuracy")
        if acc:
            lines.append(f"Float model after {step}: val {_pct(acc.get('validation'))}, test {_pct(acc.get('test'))}.")
    # per-class deltas of the worst class, per artefact
    lines += ["", "Per-class accuracy change vs float (percentage points, worst classes):"]
    for a in report["artefacts"]:
        for split, d in a["per_class_delta_pts"].items():
            worst = sorted(((v, k) for k, v in d.items() if v is not None))[:3]
            lines.append(f"- {a['file']} {split}: " + ", ".join(f"{k} {v:+.2f}" for v, k in worst))
    if "edgetpu_preflight" in report:
        pf = report["edgetpu_preflight"]
        lines += ["", f"Edge TPU pre-flight: {pf['ops_mapped']}/{pf['ops_total']} ops will map ({pf['mapped_share']:.0%}); "
                  f"compiler: {pf['compiler']}. Details: edgetpu_preflight.md."]
    if "gpu_compatibility" in report:
        g = report["gpu_compatibility"]
        lines += ["", f"GPU delegate (tf.lite Analyzer): {'compatible' if g['compatible'] else 'NOT compatible'}"
                  + (f"; {len(g['warnings'])} warning(s)" if g["warnings"] else "") + ". Full output: gpu_compatibility.txt."]
    if "onnx" in report:
        o = report["onnx"]
        lines += ["", f"ONNX vs Keras on {o['checked_images']} images: max |diff| {o['max_abs_diff']:.2e} "
                  f"(tolerance {o['tolerance']:.0e}), top-1 agreement {o['top1_agreement']:.2%}.",
                  f"On the Jetson: `{o['trtexec']}`"]
    gate = report["gate"]
    lines += ["", f"Accuracy gate (max drop {gate['max_accuracy_drop_pts']} pts): {'PASSED' if gate['passed'] else 'FAILED'}"]
    for f in gate["failures"]:
        lines.append(f"- {f['file']} on {f['split']}: {_pct(f['exported'])} vs float {_pct(f['float'])} (-{f['drop_pts']:.2f} pts)")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m train.export",
        description="Optimize a trained run (pruning, clustering, QAT, INT8) and write a model bundle for a device.",
        epilog="Targets:\n" + describe_targets() + "\n\n" + EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--target", help=f"export target: {', '.join(list_targets())}")
    p.add_argument("--run", help="run directory (default: the latest under --runs-dir), or a .keras model file with --data")
    p.add_argument("--runs-dir", default="runs", help="where to look for the latest run (default: runs)")
    p.add_argument("--out", help="bundle directory (default: <run>/bundles/<target>)")
    p.add_argument("--data", help="dataset spec to calibrate and evaluate on (default: the run's own data)")
    p.add_argument("--sparsity", type=float, help="prune to this share of zero weights, e.g. 0.8")
    p.add_argument("--qat", action="store_true", help="quantization-aware training before conversion (INT8 targets)")
    p.add_argument("--clustering", type=int, metavar="N", help="cluster weights to N shared values per kernel, e.g. 16")
    p.add_argument("--calibration-samples", type=int, metavar="N",
                   help="representative images for INT8 calibration, stratified from the training split "
                        f"(default {DEFAULT_CALIBRATION_SAMPLES})")
    p.add_argument("--io-dtype", help="input/output type of a full-integer model: uint8 (default) or int8")
    p.add_argument("--max-accuracy-drop", type=float, default=DEFAULT_MAX_ACCURACY_DROP,
                   help=f"accuracy gate in percentage points below the float model (default {DEFAULT_MAX_ACCURACY_DROP})")
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                   help=f"interpreter threads recorded for the device (default {DEFAULT_THREADS})")
    p.add_argument("--fine-tune-epochs", type=int, default=2, help="epochs of fine-tuning for pruning (clustering/QAT use half)")
    p.add_argument("--name", help="model name in the manifest (default: <model>-<data>)")
    p.add_argument("--version", help="model version in the manifest (default: the run directory's name)")
    p.add_argument("--preprocess", choices=("plain", "digit"),
                   help="device preprocessing written to the manifest (default: 'digit' for MNIST-like digits, else 'plain')")
    p.add_argument("--list-targets", action="store_true", help="list the targets and what they accept, then exit")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_targets:
        print(describe_targets())
        return EXIT_OK
    if not args.target:
        print(f"error: --target is required. Valid targets:\n{describe_targets()}", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = export_bundle(
            args.target, args.run, args.out,
            sparsity=args.sparsity, qat=args.qat, clustering=args.clustering, calibration_samples=args.calibration_samples,
            max_accuracy_drop=args.max_accuracy_drop, threads=args.threads, io_dtype=args.io_dtype, data=args.data,
            fine_tune_epochs=args.fine_tune_epochs, name=args.name, version=args.version, preprocess=args.preprocess,
            runs_dir=args.runs_dir,
        )
    except (UnknownTargetError, OptionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except CalibrationError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_DATA
    except RunError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_RUN
    except _data_error() as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_DATA
    print(_summary(result))
    if not result.passed:
        print(f"error: accuracy gate failed (max drop {args.max_accuracy_drop} pts):", file=sys.stderr)
        for f in result.failures:
            print(f"  {f['file']} on {f['split']}: {f['exported']:.2%} vs float {f['float']:.2%} (-{f['drop_pts']:.2f} pts)",
                  file=sys.stderr)
        return EXIT_GATE
    return EXIT_OK


def _data_error():
    from train.data import DataError

    return DataError


def _summary(result: ExportResult) -> str:
    r = result.report
    lines = [f"bundle: {result.bundle_dir}  (target {r['target']}, sha256 {result.manifest.sha256[:12]}...)"]
    fl = r["float"]["accuracy"]
    lines.append(f"  float model              val {_pct(fl.get('validation'))}  test {_pct(fl.get('test'))}")
    for a in r["artefacts"]:
        acc = a["accuracy"]
        lines.append(
            f"  {a['file']:<26} val {_pct(acc.get('validation'))}  test {_pct(acc.get('test'))}  "
            f"{a['size_bytes']:,} B (gzip {a['gzip_bytes']:,})  p50 {a['latency'].get('p50_ms')} ms"
        )
    if "edgetpu_preflight" in r:
        pf = r["edgetpu_preflight"]
        lines.append(f"  Edge TPU pre-flight: {pf['ops_mapped']}/{pf['ops_total']} ops map; compiler: {pf['compiler']}")
    lines.append(f"  sparsity {r['sparsity']['overall']:.1%}; report: {result.bundle_dir / REPORT_MD}")
    return "\n".join(lines)

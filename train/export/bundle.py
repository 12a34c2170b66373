"""Optimise a trained run for a target and write its model bundle: :func:`export_bundle`.

The export runs in steps, each a function below: load the run, draw the calibration set, measure
the float reference, optimise (prune -> cluster -> QAT), convert and measure each .tflite artefact,
run the target's own builders (``TargetSpec.builders``), apply the accuracy gate, write the
manifest and the report. A bundle is ``model.tflite`` (labels embedded as metadata),
``labels.txt``, ``manifest.json`` (the ``sdk.bundle.Manifest`` contract), ``export_report.json``
and ``export_report.md``, plus what the target adds. See docs/bundle.md.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

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
from train.data import DataError
from train.export import compress, measure
from train.export.conversion import calibration_set, convert
from train.export.errors import CalibrationError, DataProblem, ModelLoadError, TargetArtefactError
from train.export.metadata import embed_labels
from train.export.options import (
    DEFAULT_FINE_TUNE_EPOCHS,
    DEFAULT_MAX_ACCURACY_DROP,
    DEFAULT_THREADS,
    ExportOptions,
    check_options,
)
from train.export.report import REPORT_JSON, REPORT_MD, start_report, write_reports
from train.export.source import load_splits, open_source
from train.export.targets import BuildContext, TargetSpec, get_target
from train.runs import Run

logger = logging.getLogger(__name__)


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


class _Primary(NamedTuple):
    """The bundle's model.tflite: its bytes, interpreter I/O details and accuracy per split."""

    tflite: bytes
    io: dict
    accuracy: dict[str, float]


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
    fine_tune_epochs: int = DEFAULT_FINE_TUNE_EPOCHS,
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
    Each carries its ``exit_code`` (:mod:`train.export.errors`).
    """
    t_start = time.perf_counter()
    spec = get_target(target)
    options = check_options(
        spec, sparsity=sparsity, qat=qat, clustering=clustering, calibration_samples=calibration_samples, io_dtype=io_dtype,
        threads=threads, max_accuracy_drop=max_accuracy_drop, fine_tune_epochs=fine_tune_epochs, preprocess=preprocess,
    )
    source, splits = _load(run, data=data, runs_dir=runs_dir, splits=splits)
    bundle = Path(out) if out is not None else source.path / "bundles" / spec.name
    bundle.mkdir(parents=True, exist_ok=True)
    threads_here = measure.measuring_threads(threads)
    report = start_report(spec, source, options, threads_here)
    calib = _calibration(spec, splits.get("train"), options, source.config.seed, report)
    ref = _reference(source, spec, splits, threads_here, latency_runs, report)
    model = _optimise(source, splits, options, report)
    artefacts, primary = _convert_artefacts(model, spec, options, calib, bundle, ref)
    extra_files = {a["role"]: a["file"] for a in artefacts if a["role"] != "model"}
    artefacts += _target_artefacts(BuildContext(spec, bundle, model, primary.tflite, ref), report, extra_files)
    report["artefacts"] = artefacts
    failures = _gate(artefacts, report, options.max_accuracy_drop)
    report["seconds"] = round(time.perf_counter() - t_start, 1)
    manifest = _write_bundle(bundle, source, spec, options, report, primary, extra_files, name=name, version=version)
    logger.info("bundle written to %s (%s)", bundle, "gate passed" if not failures else f"{len(failures)} gate failure(s)")
    return ExportResult(bundle_dir=bundle, manifest=manifest, report=report, failures=failures)


# --------------------------------------------------------------------------- the steps


def _load(run: str | Path | Run | None, *, data: str | None, runs_dir: str | Path, splits: dict | None) -> tuple[Run, dict]:
    """The run (its model loaded) and the splits to calibrate, fine-tune and judge on."""
    source = open_source(run, data=data, runs_dir=runs_dir)
    if splits is None:
        splits = load_splits(source)
    num_classes = len(source.class_names)
    model_out = int(source.model.output_shape[-1])
    if model_out != num_classes:
        raise ModelLoadError(f"{source.model_path}: the model has {model_out} outputs but the run lists {num_classes} classes")
    return source, splits


def _calibration(spec: TargetSpec, train, options: ExportOptions, seed: int, report: dict) -> np.ndarray | None:
    """The calibration set of a full-integer target, drawn first: an unusable one fails before any fine-tuning."""
    if not spec.full_int8:
        return None
    try:
        calib = calibration_set(train, options.calibration_samples, seed=seed)
    except DataError as e:
        raise CalibrationError(f"cannot draw the calibration set: {e}") from e
    report["calibration"] = {"samples": int(len(calib)), "from": "training split, stratified by class", "seed": seed}
    return calib


def _reference(source: Run, spec: TargetSpec, splits: dict, threads: int, latency_runs: int, report: dict) -> measure.Reference:
    """The float model, the reference every artefact is judged against."""
    float_model, labels = source.model, source.class_names
    float_eval = measure.evaluate(lambda x: measure.predict_keras(float_model, x), splits, len(labels))
    report["float"] = {
        "accuracy": {k: v["accuracy"] for k, v in float_eval.items()},
        "n": {k: v["n"] for k, v in float_eval.items()},
        "per_class": {k: v["per_class"] for k, v in float_eval.items()},
    }
    reference = convert(float_model, "float32", static_batch=spec.static_batch)
    report["float"]["tflite_float32_bytes"] = len(reference)
    report["float"]["tflite_float32_gzip_bytes"] = measure.gzip_size(reference)
    report["float"]["params"] = int(float_model.count_params())
    return measure.Reference(splits=splits, labels=labels, float_eval=float_eval, float_tflite_bytes=len(reference),
                             threads=threads, latency_runs=latency_runs)


def _optimise(source: Run, splits: dict, options: ExportOptions, report: dict):
    """Pruning -> clustering -> QAT, as asked; each step's figures go into the report."""
    o, float_model, train, seed = options, source.model, splits.get("train"), source.config.seed
    num_classes = len(source.class_names)
    if o.optimises and (train is None or len(train) == 0):
        raise DataProblem(f"{source.config.data}: the training split is empty; pruning/clustering/QAT need it to fine-tune")
    model = float_model
    steps: dict[str, Any] = {}
    if o.sparsity is not None:
        t0 = time.perf_counter()
        model = compress.prune(model, train, sparsity=o.sparsity, epochs=o.fine_tune_epochs, seed=seed)
        steps["pruning"] = {"target_sparsity": o.sparsity, "schedule": "PolynomialDecay(0 -> target, first 70% of steps)",
                            "layer_targets": compress.layer_sparsity_targets(float_model, o.sparsity),
                            "fine_tune_epochs": o.fine_tune_epochs, "seconds": round(time.perf_counter() - t0, 1),
                            "sparsity": compress.sparsity_report(model)["overall"],
                            "float_accuracy": measure.accuracies(model, splits, num_classes)}
    if o.clustering is not None:
        t0 = time.perf_counter()
        model = compress.cluster(model, train, clusters=o.clustering, epochs=max(1, o.fine_tune_epochs // 2),
                                 preserve_sparsity=o.sparsity is not None, seed=seed)
        steps["clustering"] = {"clusters": o.clustering, "preserve_sparsity": o.sparsity is not None,
                               "distinct_weights": compress.distinct_weights(model), "seconds": round(time.perf_counter() - t0, 1),
                               "float_accuracy": measure.accuracies(model, splits, num_classes)}
    report["sparsity"] = compress.sparsity_report(model)
    if o.qat:
        t0 = time.perf_counter()
        model = compress.quantize_aware(model, train, epochs=max(1, o.fine_tune_epochs // 2), preserve_sparsity=o.sparsity is not None,
                                        preserve_clusters=o.clustering is not None, seed=seed)
        steps["qat"] = {"epochs": max(1, o.fine_tune_epochs // 2), "seconds": round(time.perf_counter() - t0, 1)}
    report["optimizations"] = steps
    return model


def _convert_artefacts(model, spec: TargetSpec, options: ExportOptions, calib: np.ndarray | None, bundle: Path,
                       ref: measure.Reference) -> tuple[list[dict[str, Any]], _Primary]:
    """Convert each .tflite artefact of the target, embed the labels, write and measure it."""
    # A manifest and reports left by an earlier export describe the files about to be replaced:
    # gone first, so a failure from here on never leaves a folder that looks like a finished bundle.
    for stale in (MANIFEST_FILE, REPORT_JSON, REPORT_MD):
        (bundle / stale).unlink(missing_ok=True)
    artefacts: list[dict[str, Any]] = []
    primary = None
    for art in spec.artefacts:
        tfl = convert(model, art.quantization, representative=calib, io_dtype=options.io_dtype, static_batch=spec.static_batch)
        tfl = embed_labels(tfl, ref.labels)
        (bundle / art.filename).write_bytes(tfl)
        details = measure.io_details(tfl)
        entry, _ = ref.judge(
            {"file": art.filename, "role": art.role, "quantization": art.quantization, "description": art.description},
            size=len(tfl), gzip_bytes=measure.gzip_size(tfl),
            predict=lambda x, b=tfl: measure.predict_tflite(b, x, num_threads=ref.threads),
            latency=lambda b=tfl: measure.latency_tflite(b, ref.sample, num_threads=ref.threads, runs=ref.latency_runs),
            weight_sparsity=measure.tflite_weight_sparsity(tfl), input=details["input"], output=details["output"],
        )
        artefacts.append(entry)
        if art.role == "model":
            primary = _Primary(tfl, details, entry["accuracy"])
    return artefacts, primary


def _target_artefacts(ctx: BuildContext, report: dict, extra_files: dict[str, str]) -> list[dict[str, Any]]:
    """Run the target's builders in order; their report sections and files join the bundle's.

    An artefact the target promises but cannot produce fails the export here, before the manifest.
    """
    artefacts: list[dict[str, Any]] = []
    try:
        for builder in ctx.spec.builders:
            logger.info("target %s: %s", ctx.spec.name, builder.name)
            built = builder.build(ctx)
            report.update(built.report)
            extra_files.update(built.extra_files)
            artefacts += built.artefacts
    except TargetArtefactError as e:
        e.bundle_dir = ctx.bundle
        raise
    return artefacts


def _gate(artefacts: list[dict[str, Any]], report: dict, max_accuracy_drop: float) -> list[dict[str, Any]]:
    """Every artefact more than ``max_accuracy_drop`` points below the float model on a split."""
    failures = []
    for a in artefacts:
        for split, acc in a["accuracy"].items():
            base = report["float"]["accuracy"][split]
            drop = (base - acc) * 100
            if drop > max_accuracy_drop + 1e-9:
                failures.append({"file": a["file"], "split": split, "float": base, "exported": acc, "drop_pts": round(drop, 3)})
    report["gate"] = {"max_accuracy_drop_pts": max_accuracy_drop, "passed": not failures, "failures": failures}
    return failures


def _write_bundle(bundle: Path, source: Run, spec: TargetSpec, options: ExportOptions, report: dict, primary: _Primary,
                  extra_files: dict[str, str], *, name: str | None, version: str | None) -> Manifest:
    """labels.txt, manifest.json (last but for the reports: a folder with it is a finished bundle), the reports."""
    labels = source.class_names
    (bundle / LABELS_FILE).write_text("\n".join(labels) + "\n")
    extra_files["report"] = REPORT_JSON
    extra_files["report_md"] = REPORT_MD
    manifest = _manifest(source, spec, bundle, options, primary, report, extra_files, name=name, version=version)
    write_manifest(bundle, manifest)
    report["manifest"] = json.loads(manifest.model_dump_json())
    write_reports(bundle, report)
    return manifest


# --------------------------------------------------------------------------- the manifest


def _default_preprocess(info: dict, labels: list[str], colour: str) -> str:
    """'digit' for MNIST-like digit sets (grey, light ink on dark, classes 0-9), else 'plain'."""
    if info.get("preprocess"):
        return info["preprocess"]
    digits = labels == [str(i) for i in range(10)]
    return "digit" if digits and colour == "grey" and info.get("polarity") == "light_on_dark" else "plain"


def _split_accuracy(accuracy: dict[str, float]) -> SplitAccuracy:
    return SplitAccuracy(validation=accuracy.get("validation"), test=accuracy.get("test"))


def _quantization(d: dict) -> Quantization | None:
    q = d["quantization"]
    return Quantization(scale=q["scale"], zero_point=q["zero_point"]) if q and d["dtype"] in ("int8", "uint8") else None


def _manifest(source: Run, spec: TargetSpec, bundle: Path, options: ExportOptions, primary: _Primary, report: dict,
              extra_files: dict[str, str], *, name: str | None, version: str | None) -> Manifest:
    io, labels, info = primary.io, source.class_names, source.info
    data_name = Path(str(source.config.data).rstrip("/")).stem or str(source.config.data)
    model_path = bundle / MODEL_FILE
    colour = info.get("colour") or ("rgb" if io["input"]["shape"][-1] == 3 else "grey")
    inp = InputSpec(
        shape=io["input"]["shape"],
        dtype=io["input"]["dtype"],
        quantization=_quantization(io["input"]),
        colour=colour,
        polarity=info.get("polarity", "any"),
        preprocess=options.preprocess or _default_preprocess(info, labels, colour),
    )
    outp = OutputSpec(shape=io["output"]["shape"], dtype=io["output"]["dtype"], quantization=_quantization(io["output"]),
                      activation="softmax")
    return Manifest(
        name=name or f"{source.config.model}-{data_name}",
        version=version or source.path.name,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        target=spec.name,
        model_file=MODEL_FILE,
        sha256=sha256_file(model_path),
        size_bytes=model_path.stat().st_size,
        gzip_bytes=measure.gzip_size(model_path.read_bytes()),
        input=inp,
        output=outp,
        labels=labels,
        accuracy_float=_split_accuracy(report["float"]["accuracy"]),
        accuracy_exported=_split_accuracy(primary.accuracy),
        sparsity=report["sparsity"]["overall"],
        delegate=spec.delegate_for(extra_files),
        num_threads=options.threads if spec.records_threads else None,
        source_run=str(source.path),
        extra_files=extra_files,
    )

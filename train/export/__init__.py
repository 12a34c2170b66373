"""Optimize a trained run and emit a model bundle for a device.

    python -m train.export --target coral                      # the latest run under runs/
    python -m train.export --target rpi --run runs/X --sparsity 0.8 --threads 4
    python -m train.export --target jetson --out bundles/jetson
    python -m train.export --list-targets

The library call is :func:`export_bundle` with the same argument names as the command line
(:mod:`train.export.__main__`). A bundle is ``model.tflite`` (labels embedded as metadata),
``labels.txt``, ``manifest.json`` (the ``sdk.bundle.Manifest`` contract), ``export_report.json``
and ``export_report.md``, plus what the target adds (ONNX for Jetson, the Edge TPU pre-flight
report and compiler output for Coral, the dynamic-range variant for CPU). See docs/bundle.md.

The package, one concern a module:

- ``bundle``: :func:`export_bundle`, the export step by step; ``options``: the options checked
  against the target; ``source``: the run (or bare model file) to export; ``report``: the report.
- ``compress``: pruning, weight clustering, quantization-aware training.
- ``conversion``: post-training quantization, the TFLite conversion and its calibration set.
- ``measure``: accuracy, size, gzip size, latency of models and artefacts.
- ``targets``: the target registry, one spec a module; what a target adds beyond its .tflite
  files it declares as builders in its spec. ``preflight`` (Edge TPU) and ``metadata`` (labels
  in the .tflite) serve them.
- ``errors``: what an export fails with, each error carrying its exit code.

This module re-exports what other code uses; the names below are the package's public API.
"""
from __future__ import annotations

from train.export.bundle import ExportResult, export_bundle
from train.export.compress import (
    cluster,
    distinct_weights,
    layer_sparsity_targets,
    prune,
    quantize_aware,
    recalibrate_batchnorm,
    sparsity_report,
)
from train.export.conversion import calibration_set, convert
from train.export.errors import (
    CalibrationError,
    DataProblem,
    ExportError,
    ModelLoadError,
    OptionError,
    TargetArtefactError,
    UnknownTargetError,
)
from train.export.measure import (
    gzip_size,
    io_details,
    latency_tflite,
    measuring_threads,
    predict_keras,
    predict_tflite,
    tflite_weight_sparsity,
)
from train.export.metadata import embed_labels, read_labels
from train.export.options import DEFAULT_CALIBRATION_SAMPLES, DEFAULT_MAX_ACCURACY_DROP, DEFAULT_THREADS
from train.export.preflight import preflight
from train.export.report import REPORT_JSON, REPORT_MD, report_markdown
from train.export.source import open_source
from train.export.targets import TargetSpec, describe_targets, get_target, list_targets, register_target

__all__ = [
    # the export
    "ExportResult", "export_bundle", "open_source", "report_markdown", "REPORT_JSON", "REPORT_MD",
    "DEFAULT_CALIBRATION_SAMPLES", "DEFAULT_MAX_ACCURACY_DROP", "DEFAULT_THREADS",
    # targets
    "TargetSpec", "describe_targets", "get_target", "list_targets", "register_target",
    # errors
    "CalibrationError", "DataProblem", "ExportError", "ModelLoadError", "OptionError", "TargetArtefactError",
    "UnknownTargetError",
    # the optimisation, conversion and measuring toolkit
    "calibration_set", "cluster", "convert", "distinct_weights", "embed_labels", "gzip_size", "io_details",
    "latency_tflite", "layer_sparsity_targets", "measuring_threads", "predict_keras", "predict_tflite", "preflight",
    "prune", "quantize_aware", "read_labels", "recalibrate_batchnorm", "sparsity_report", "tflite_weight_sparsity",
]

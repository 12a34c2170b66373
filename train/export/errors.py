"""The errors an export ends with, each carrying its code on the project's one exit-code table.

The classes sit on :mod:`train.errors` (``UsageError``, ``InputError``, ``ArtefactError``), so
``run_command`` turns any of them into ``error: <message>`` and its exit code; they are also all
:class:`ExportError`, for callers that catch what ``export_bundle`` raises on purpose. Nothing here
imports the rest of the package, so the target modules can raise these without an import cycle.
"""
from __future__ import annotations

from pathlib import Path

from sdk.bundle import MANIFEST_FILE
from train.errors import ArtefactError, CommandError, ExitCode, InputError, UsageError

__all__ = [
    "CalibrationError", "DataProblem", "ExportError", "ModelLoadError", "OptionError", "TargetArtefactError",
    "UnknownTargetError",
]


class ExportError(CommandError):
    """Base class of the errors :func:`train.export.export_bundle` raises on purpose."""


class OptionError(ExportError, UsageError):
    """An option the target does not accept, or a value out of range."""


class UnknownTargetError(OptionError):
    """``--target`` names no registered target."""


class ModelLoadError(ExportError, ValueError):
    """The model file exists but cannot be read, or does not fit the run (its number of outputs)."""

    exit_code = ExitCode.MODEL


class DataProblem(ExportError, InputError):
    """The data the export needs (splits, calibration set) is missing or unusable."""


class CalibrationError(DataProblem):
    """The representative dataset for post-training quantization is empty or unusable."""


class TargetArtefactError(ExportError, ArtefactError):
    """The target could not produce an artefact it promises: Jetson's ONNX (converted and checked
    against Keras), Coral's ``*_edgetpu.tflite`` when ``edgetpu_compiler`` is on PATH.

    Raised before the manifest is written: the folder keeps the partial output (and the compiler
    log) for inspection, but without ``manifest.json`` it is no bundle.
    """

    def __init__(self, target: str, artefact: str, reason: str, remedy: str):
        self.target, self.artefact, self.reason, self.remedy = target, artefact, reason, remedy
        self.bundle_dir: Path | None = None  # set by export_bundle
        super().__init__(f"target {target!r}: could not produce {artefact}: {reason}")

    def __str__(self) -> str:
        msg = f"{self.args[0]}\n  what to do: {self.remedy}"
        if self.bundle_dir is not None:
            msg += f"\n  no bundle written: {self.bundle_dir} holds the partial output and no {MANIFEST_FILE}"
        return msg

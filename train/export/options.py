"""The options of an export, checked against the target's table before any work is done."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from train.export.errors import CalibrationError, OptionError
from train.export.targets import TargetSpec, describe_targets

DEFAULT_CALIBRATION_SAMPLES = 500
DEFAULT_MAX_ACCURACY_DROP = 1.0
DEFAULT_THREADS = 4
DEFAULT_FINE_TUNE_EPOCHS = 2
PREPROCESS_CHOICES = ("plain", "digit")


@dataclass(frozen=True)
class ExportOptions:
    """The checked options of one export (the names of ``export_bundle``'s arguments)."""

    sparsity: float | None
    qat: bool
    clustering: int | None
    calibration_samples: int | None  # resolved to the default for a full-integer target, else None
    io_dtype: str  # resolved to the target's default
    threads: int
    max_accuracy_drop: float
    fine_tune_epochs: int
    preprocess: str | None

    @property
    def optimises(self) -> bool:
        """Whether any step fine-tunes the model (they all need the training split)."""
        return self.sparsity is not None or self.clustering is not None or self.qat

    def to_report(self) -> dict[str, Any]:
        """The ``options`` block of the export report."""
        return {
            "sparsity": self.sparsity, "qat": self.qat, "clustering": self.clustering,
            "calibration_samples": self.calibration_samples, "io_dtype": self.io_dtype, "threads": self.threads,
            "max_accuracy_drop": self.max_accuracy_drop, "fine_tune_epochs": self.fine_tune_epochs,
        }


def check_options(spec: TargetSpec, *, sparsity: float | None = None, qat: bool = False, clustering: int | None = None,
                  calibration_samples: int | None = None, io_dtype: str | None = None, threads: int = DEFAULT_THREADS,
                  max_accuracy_drop: float = DEFAULT_MAX_ACCURACY_DROP, fine_tune_epochs: int = DEFAULT_FINE_TUNE_EPOCHS,
                  preprocess: str | None = None) -> ExportOptions:
    """Validate the options against the target's table (``OptionError``, an empty calibration set:
    ``CalibrationError``) and resolve the defaults that depend on the target."""
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
    if preprocess not in (None, *PREPROCESS_CHOICES):
        raise OptionError(f"--preprocess must be 'plain' or 'digit'; got {preprocess!r}")
    if max_accuracy_drop < 0:
        raise OptionError(f"--max-accuracy-drop is in percentage points and must be >= 0; got {max_accuracy_drop}")
    dtype = io_dtype or spec.io_dtypes[0]
    if dtype not in spec.io_dtypes:
        raise OptionError(f"target {spec.name!r} takes --io-dtype {' or '.join(spec.io_dtypes)}; got {dtype!r}")
    n_calib = DEFAULT_CALIBRATION_SAMPLES if calibration_samples is None else calibration_samples
    if spec.full_int8 and n_calib < 1:
        raise CalibrationError(f"the calibration set is empty: --calibration-samples must be >= 1, got {n_calib}")
    return ExportOptions(sparsity=sparsity, qat=qat, clustering=clustering, calibration_samples=n_calib if spec.full_int8 else None,
                         io_dtype=dtype, threads=threads, max_accuracy_drop=max_accuracy_drop,
                         fine_tune_epochs=fine_tune_epochs, preprocess=preprocess)

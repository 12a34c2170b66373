"""Run directories: what ``train.train`` writes and what ``train.evaluate`` / ``train.export`` read.

Layout of a run directory::

    model.keras      the trained tf_keras model (takes raw 0..255 pixels, outputs softmax)
    config.json      the resolved TrainConfig
    run.json         facts derived while training: input shape, class names, colour, polarity,
                     split sizes, library versions, wall times
    labels.txt       one class name per line, in output order
    history.json     per-epoch metrics
    metrics.json     evaluation metrics (validation and test)
    report.html      self-contained evaluation report, rendered from the files below
    figures/         the evaluation's figures (PNG): history, confusion matrix, ROC, galleries
    analysis/        one <name>.json per analysis (robustness, explanations, fairness, crossval, tune...)
                     and its images under <name>/; the report is re-rendered from them
    dataset.json     dataset summary (per-class counts, pixel statistics)
    tensorboard/     TensorBoard logs
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from train.config import TrainConfig
from train.errors import CommandError, ExitCode

MODEL_FILE = "model.keras"
LATEST_FILE = "LATEST"


class RunError(CommandError, ValueError):
    """A run directory that is missing or incomplete."""

    exit_code = ExitCode.BUNDLE


class RunModelError(RunError):
    """A run whose model file exists but cannot be loaded."""

    exit_code = ExitCode.MODEL


@dataclass
class Run:
    path: Path
    config: TrainConfig
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def class_names(self) -> list[str]:
        return list(self.info["class_names"])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.info["input_shape"])  # type: ignore[return-value]

    @cached_property
    def model(self):
        from train._tf import keras

        try:
            return keras.models.load_model(self.model_path)
        except (OSError, ValueError) as e:
            raise RunModelError(f"{self.model_path}: cannot load the model: {e}") from e

    def splits(self) -> dict:
        """Rebuild the exact train/val(/test) splits the run used (same spec, seed and fractions)."""
        from train.data.pipeline import build_splits

        return build_splits(self.config)


def latest_run(runs_dir: str | Path = "runs") -> Path:
    root = Path(runs_dir)
    marker = root / LATEST_FILE
    if marker.is_file():
        p = root / marker.read_text().strip()
        if (p / MODEL_FILE).is_file():
            return p
    candidates = sorted((p for p in root.glob("*/") if (p / MODEL_FILE).is_file()), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise RunError(f"no training run found under {root.resolve()}: run `python -m train.train` first or pass --run DIR")
    return candidates[-1]


def mark_latest(run_dir: Path) -> None:
    (run_dir.parent / LATEST_FILE).write_text(run_dir.name + "\n")


def load_run(path: str | Path | None = None, runs_dir: str | Path = "runs") -> Run:
    """Open a run directory (default: the latest under ``runs_dir``)."""
    p = Path(path) if path is not None else latest_run(runs_dir)
    if not p.is_dir():
        raise RunError(f"{p}: run directory not found")
    for name in (MODEL_FILE, "config.json", "run.json"):
        if not (p / name).is_file():
            raise RunError(f"{p}: not a complete training run (missing {name})")
    config = TrainConfig.model_validate_json((p / "config.json").read_text())
    info = json.loads((p / "run.json").read_text())
    return Run(path=p, config=config, info=info)

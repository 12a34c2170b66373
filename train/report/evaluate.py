"""Evaluating a run's model: on its own splits (metrics.json, figures, report.html), on another
labelled dataset, or as a Kaggle submission for an unlabelled one."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from train.errors import InputError

from .html import render_run_report, write_figures
from .metrics import classification_metrics, inference_timing, predict_proba
from .plots import plot_confusion, plot_gallery, plot_history, plot_roc


def evaluate_run(run_dir: str | Path, *, model=None, splits: dict | None = None, timing: bool = True) -> dict[str, Any]:
    """Evaluate a run's model on its validation and test splits; write metrics.json, the figures and
    report.html (with every analysis stored in the run). Returns the metrics."""
    from train.analysis.explain import gradcam_gallery
    from train.runs import load_run

    run = load_run(run_dir)
    model = model if model is not None else run.model
    splits = splits if splits is not None else run.splits()
    class_names = run.class_names
    history = json.loads((run.path / "history.json").read_text()) if (run.path / "history.json").is_file() else {}

    metrics: dict[str, Any] = {"model": run.config.model, "data": run.config.data}
    figures: dict[str, bytes | None] = {"history": plot_history(history)}
    for split, key in (("validation", "val"), ("test", "test")):
        ds = splits.get(key)
        if ds is None or ds.y is None:
            continue
        probs = predict_proba(model, ds.x)
        m = classification_metrics(ds.y, probs, class_names)
        metrics[split] = m
        figures[f"{split}_confusion"] = plot_confusion(m["confusion_matrix"], class_names, f"{split} confusion matrix")
        figures[f"{split}_roc"] = plot_roc(ds.y, probs, class_names, f"{split} one-vs-rest ROC")
        figures[f"{split}_gallery"] = plot_gallery(ds.x, ds.y, probs, class_names)
        figures[f"{split}_gradcam"] = gradcam_gallery(model, ds.x, ds.y, probs, class_names, limit=16)
    if timing:
        metrics["timing"] = inference_timing(model, splits["val"].x[:512])
    metrics["train_seconds"] = run.info.get("train_seconds")
    (run.path / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    write_figures(run.path, figures)
    render_run_report(run.path)
    return metrics


def evaluate_on(run_dir: str | Path | None, spec: str, split: str = "test") -> dict[str, Any]:
    """The run's model on another labelled dataset (resized/colour-converted to the model's input)."""
    from train.data import load_dataset
    from train.runs import load_run

    run = load_run(run_dir)
    h, w, c = run.input_shape
    ds = load_dataset(spec, split=split, image_size=(h, w), colour="rgb" if c == 3 else "grey")
    if ds.y is None:
        raise InputError(f"{spec}: has no labels; use --predict to write predictions instead")
    if ds.class_names != run.class_names:
        raise InputError(f"{spec}: classes {ds.class_names} differ from the model's {run.class_names}")
    return classification_metrics(ds.y, predict_proba(run.model, ds.x), run.class_names)


def predict_to_submission(run_dir: str | Path | None, spec: str, out: str | Path) -> Path:
    """Predict an unlabelled Kaggle test CSV and write ``ImageId,Label``."""
    from train.data import load_dataset, write_kaggle_submission
    from train.runs import load_run

    run = load_run(run_dir)
    ds = load_dataset(spec)
    ids = ds.ids if ds.ids is not None else np.arange(1, len(ds) + 1)
    pred = predict_proba(run.model, ds.x).argmax(1)
    # Kaggle wants the label itself; for digit classes "0".."9" that is the class name.
    if all(name.isdigit() for name in run.class_names):
        pred = np.array([int(name) for name in run.class_names])[pred]
    write_kaggle_submission(ids, pred, out)
    return Path(out)

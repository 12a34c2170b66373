"""Stratified K-fold cross-validation of a model on a dataset (command line: train/crossval.py).

    python -m train.crossval --model lenet5 --data train.csv --folds 5 --epochs 10

Takes the same flags as ``train.train`` plus ``--folds``. Every fold trains a fresh model on
K-1 folds and is scored on the held-out fold; the output is each metric's mean and standard
deviation over the folds (``crossval.json`` in the output directory, and a table on stdout).
Early stopping and learning-rate reduction watch a stratified ``--val-fraction`` carved from the
K-1 training folds, never the held-out fold, so the fold scores are not selected on themselves.
With ``--run`` the result is also stored as the run's "crossval" analysis (:func:`crossval_report`).
"""
from __future__ import annotations

import json
import logging
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from train.config import TrainConfig
from train.data import kfold_indices, load_dataset, stratified_sample, stratified_split
from train.data.pipeline import make_augmenter, make_tf_dataset
from train.errors import InputError, UsageError
from train.report import Table, add_analysis, classification_metrics, predict_proba

logger = logging.getLogger(__name__)

METRICS = ("accuracy", "precision_macro", "recall_macro", "f1_macro", "f1_weighted", "roc_auc_macro")


def cross_validate(config: TrainConfig, folds: int = 5, out_dir: str | Path | None = None) -> dict[str, Any]:
    from train import models
    from train._tf import keras
    from train.fit import fit, one_hot_if_needed

    if folds < 2:
        raise UsageError(f"--folds must be at least 2, got {folds}")
    size = tuple(config.image_size) if config.image_size else None
    ds = load_dataset(config.data, split="train", image_size=size, colour=config.colour)
    if ds.y is None:
        raise InputError(f"{config.data}: cross-validation needs labels")
    if config.train_limit is not None and config.train_limit < len(ds):
        ds = stratified_sample(ds, config.train_limit, seed=config.seed)
    out = Path(out_dir or Path(config.runs_dir) / f"cv-{config.model}-{datetime.now():%Y%m%d-%H%M%S}")
    out.mkdir(parents=True, exist_ok=True)
    fold_results = []
    for k, (tr_idx, va_idx) in enumerate(kfold_indices(ds, k=folds, seed=config.seed), start=1):
        keras.utils.set_random_seed(config.seed + k)
        inner = stratified_split(ds.subset(tr_idx), val_fraction=config.val_fraction, seed=config.seed)
        tr, stop, va = inner["train"], inner["val"], ds.subset(va_idx)
        border = float(np.median(tr.x[:2000, 0]))
        augmenter = make_augmenter(config.augment, tr.image_shape, border, config.seed)
        train_data = make_tf_dataset(tr, config.batch_size, training=True, augmenter=augmenter, seed=config.seed)
        train_data = one_hot_if_needed(train_data, config, ds.num_classes)  # label smoothing wants one-hot labels
        stop_data = one_hot_if_needed(make_tf_dataset(stop, config.batch_size, training=False), config, ds.num_classes)
        model = models.create_model(config.model, tr.image_shape, ds.num_classes, **config.model_kwargs)
        fold_dir = out / f"fold{k}"
        fold_dir.mkdir(exist_ok=True)
        t = time.perf_counter()
        hist = fit(model, config.model_copy(update={"tensorboard": False}), train_data, stop_data, config.epochs,
                    config.learning_rate, fold_dir, int(np.ceil(len(tr) / config.batch_size)))
        m = classification_metrics(va.y, predict_proba(model, va.x), ds.class_names)
        row = {"fold": k, "n_train": len(tr), "n_early_stop": len(stop), "n_val": len(va), "epochs": len(hist.history["loss"]),
               "seconds": round(time.perf_counter() - t, 1), **{name: m.get(name) for name in METRICS}}
        fold_results.append(row)
        logger.info("fold %d/%d: accuracy %.4f macro F1 %.4f", k, folds, row["accuracy"], row["f1_macro"])
        keras.backend.clear_session()
    summary = {
        name: {"mean": float(np.mean([r[name] for r in fold_results])), "std": float(np.std([r[name] for r in fold_results], ddof=1))}
        for name in METRICS
        if all(r.get(name) is not None for r in fold_results)
    }
    result = {"model": config.model, "data": config.data, "folds": folds, "n": len(ds), "per_fold": fold_results, "summary": summary,
              "config": json.loads(config.model_dump_json())}
    (out / "crossval.json").write_text(json.dumps(result, indent=2) + "\n")
    result["out_dir"] = str(out)
    return result


def crossval_tables(result: dict[str, Any]) -> dict[str, Table]:
    """The summary (mean, standard deviation) and the per-fold table, for the evaluation report."""
    summary = [{"metric": k, "mean": v["mean"], "std": v["std"]} for k, v in result["summary"].items()]
    return {"summary": Table(summary, ["metric", "mean", "std"], {"mean": ".4f", "std": ".4f"}),
            "per_fold": Table(result["per_fold"], ["fold", "n_train", "n_val", "epochs", "seconds", *METRICS],
                              {m: ".4f" for m in METRICS})}


def crossval_report(run_dir: str | Path, result: dict[str, Any]) -> Path:
    """Store ``result`` as the run's "crossval" analysis (template ``analysis/crossval.html``)."""
    return add_analysis(run_dir, "crossval", f"{result['folds']}-fold stratified cross-validation", result,
                        tables=crossval_tables(result))


def format_result(result: dict[str, Any]) -> str:
    lines = [f"{result['folds']}-fold stratified CV of {result['model']} on {result['data']} (n={result['n']})",
             f"{'metric':<16}{'mean':>8}{'std':>8}"]
    for name, s in result["summary"].items():
        lines.append(f"{name:<16}{s['mean']:>8.4f}{s['std']:>8.4f}")
    return "\n".join(lines)

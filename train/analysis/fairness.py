"""Per-group evaluation of a run's model (fairness), with fairlearn's ``MetricFrame``.

    python -m train.fairness --run runs/X --data pooled.csv --groups source      # a CSV column
    python -m train.fairness --run runs/X --data mnist_dir --groups writers.csv  # a side file

The group attribute comes from a column of a Kaggle-style CSV (``group``, ``source`` or any
other non-pixel column) or from a side file with one entry per sample of ``--data``: a CSV with
a ``group`` column (and optionally ``index``, the 0-based row of each sample), a ``.txt`` with
one group per line, or a 1-D ``.npy``.

Per group: sample count, accuracy, macro F1, error rate, recall of each class and selection rate
of each class (the share of the group predicted as that class), and the confusion matrix; per
metric, the largest gap between groups (``difference()``, max - min) and ``ratio()`` (min / max).
The results go into the run's report ("Fairness" section, data in ``analysis/fairness.json``).
The command line is train/fairness.py.
"""
from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import numpy as np

from train.errors import InputError
from train.report import Table, add_analysis, plot_confusion, png, predict_proba, pyplot

logger = logging.getLogger(__name__)

#: Groups with fewer samples than this are reported with a warning: their metrics are noisy.
MIN_GROUP_SIZE = 30
#: The headline metrics, in table order; per-class recall and selection rate follow them.
HEADLINE = ("accuracy", "f1_macro", "error_rate")
GROUP_FILE_SUFFIXES = (".csv", ".txt", ".npy")


# --------------------------------------------------------------------------- group attribute


def is_group_file(groups: str) -> bool:
    """Whether ``--groups`` names a side file (an existing file or a .csv/.txt/.npy name)."""
    return Path(groups).suffix.lower() in GROUP_FILE_SUFFIXES or Path(groups).is_file()


def read_group_file(path: str | Path, n: int, data: str = "the dataset") -> np.ndarray:
    """The group of each of ``n`` samples, as strings, from a side file (see the module docstring).
    Raises :class:`~train.errors.InputError` (a ``ValueError``) for a file that does not fit."""
    import pandas as pd

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in GROUP_FILE_SUFFIXES:
        raise InputError(f"{path}: a group file must be one of {', '.join(GROUP_FILE_SUFFIXES)}")
    if not path.is_file():
        raise InputError(f"{path}: group file not found")
    index = None
    if suffix == ".npy":
        groups = np.load(path, allow_pickle=False)
        if groups.ndim != 1:
            raise InputError(f"{path}: expected a 1-D array of groups, got shape {groups.shape}")
    elif suffix == ".txt":
        groups = np.array(path.read_text(encoding="utf-8").rstrip("\r\n").splitlines())
    else:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
        if "group" not in table.columns:
            raise InputError(f"{path}: no 'group' column; its columns are {', '.join(map(repr, table.columns))} "
                             "(expected 'group', or 'index,group')")
        groups = table["group"].to_numpy()
        if "index" in table.columns:
            try:
                index = table["index"].astype(np.int64).to_numpy()
            except ValueError as e:
                raise InputError(f"{path}: column 'index' must hold whole numbers (0-based sample rows)") from e
    if len(groups) != n:
        raise InputError(f"{path}: {len(groups)} group entries, but {data} has {n} samples; one per sample is needed")
    groups = np.array([str(g).strip() for g in groups])
    if index is None:
        return groups
    if index.min() < 0 or index.max() >= n or len(np.unique(index)) != n:
        raise InputError(f"{path}: column 'index' must list each sample row 0..{n - 1} exactly once")
    out = np.empty(n, dtype=groups.dtype)
    out[index] = groups
    return out


# --------------------------------------------------------------------------- metrics


def _metrics(num_classes: int) -> dict[str, Any]:
    from fairlearn.metrics import count, selection_rate
    from sklearn.metrics import accuracy_score, f1_score, recall_score, zero_one_loss

    metrics: dict[str, Any] = {"count": count, "accuracy": accuracy_score,
                               "f1_macro": functools.partial(f1_score, average="macro", zero_division=0),
                               "error_rate": zero_one_loss}
    for k in range(num_classes):  # NaN recall when a group has no sample of the class
        metrics[f"recall[{k}]"] = functools.partial(recall_score, labels=[k], average="macro", zero_division=np.nan)
        metrics[f"selection_rate[{k}]"] = functools.partial(selection_rate, pos_label=k)
    return metrics


def _num(v) -> float | None:
    return None if v is None or not np.isfinite(v) else float(v)


def group_metrics(y_true: np.ndarray, y_pred: np.ndarray, groups: np.ndarray, class_names: list[str],
                  min_group_size: int = MIN_GROUP_SIZE) -> dict[str, Any]:
    """Metrics per group, their gaps and per-group confusion matrices, as plain Python values.

    ``gaps[metric]``: min and max over the groups (with the group), ``difference`` (max - min) and
    ``ratio`` (min / max); None where fewer than two groups have a value (a class absent in all
    but one group).
    """
    import pandas as pd
    from fairlearn.metrics import MetricFrame
    from sklearn.metrics import confusion_matrix

    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    groups = pd.Series(np.asarray(groups).astype(str), name="group")
    if not len(y_true) == len(y_pred) == len(groups):
        raise ValueError(f"y_true, y_pred and groups differ in length: {len(y_true)}, {len(y_pred)}, {len(groups)}")
    k = len(class_names)
    frame = MetricFrame(metrics=_metrics(k), y_true=y_true, y_pred=y_pred, sensitive_features=groups)
    confusion = MetricFrame(metrics={"cm": functools.partial(confusion_matrix, labels=np.arange(k))},
                            y_true=y_true, y_pred=y_pred, sensitive_features=groups)
    by_group = frame.by_group
    diff, ratio = frame.difference(method="between_groups"), frame.ratio(method="between_groups")
    gaps = {}
    for metric in by_group.columns.drop("count"):
        values = by_group[metric].dropna()
        enough = len(values) >= 2
        gaps[metric] = {"min": _num(values.min()) if enough else None,
                        "min_group": str(values.idxmin()) if enough else None,
                        "max": _num(values.max()) if enough else None,
                        "max_group": str(values.idxmax()) if enough else None,
                        "difference": _num(diff[metric]) if enough else None,
                        "ratio": _num(ratio[metric]) if enough else None}
    names = [str(g) for g in by_group.index]
    small = [g for g in names if by_group.loc[g, "count"] < min_group_size]
    for g in small:
        logger.warning("group %r has %d samples (fewer than %d): its metrics are noisy",
                       g, int(by_group.loc[g, "count"]), min_group_size)

    def per_class(prefix: str, g: str) -> dict[str, float | None]:
        return {c: _num(by_group.loc[g, f"{prefix}[{i}]"]) for i, c in enumerate(class_names)}

    return {
        "n": int(len(y_true)),
        "class_names": list(class_names),
        "groups": names,
        "min_group_size": int(min_group_size),
        "small_groups": small,
        "overall": {"count": int(frame.overall["count"]), **{m: _num(frame.overall[m]) for m in HEADLINE}},
        "by_group": {g: {"count": int(by_group.loc[g, "count"]), **{m: _num(by_group.loc[g, m]) for m in HEADLINE}}
                     for g in names},
        "recall_by_class": {g: per_class("recall", g) for g in names},
        "selection_rate_by_class": {g: per_class("selection_rate", g) for g in names},
        "gaps": gaps,
        "confusion_matrix": {g: confusion.by_group.loc[g, "cm"].tolist() for g in names},
    }


# --------------------------------------------------------------------------- output

_LABELS = {"accuracy": "accuracy", "f1_macro": "macro F1", "error_rate": "error rate"}


def format_table(result: dict[str, Any]) -> str:
    """The per-group headline metrics and their gaps as a text table."""
    import pandas as pd

    rows = {**result["by_group"], "(all)": result["overall"]}
    table = pd.DataFrame(rows).T[["count", *HEADLINE]].rename(columns=_LABELS)
    table["count"] = table["count"].astype(int)
    gaps = pd.DataFrame({_LABELS[m]: result["gaps"][m] for m in HEADLINE}).T
    return (table.to_string(float_format=lambda v: f"{v:.4f}") + "\n\nlargest gap between groups:\n"
            + gaps[["min", "min_group", "max", "max_group", "difference", "ratio"]].to_string(
                float_format=lambda v: f"{v:.4f}"))


def _bar_charts(result: dict[str, Any]) -> tuple[bytes, bytes]:
    """(headline metrics by group, recall per class by group) as PNG bytes, via pandas plotting."""
    import pandas as pd

    plt = pyplot()
    headline = pd.DataFrame(result["by_group"]).T[list(HEADLINE)].rename(columns=_LABELS)
    axes = headline.plot.bar(subplots=True, layout=(1, len(HEADLINE)), legend=False, rot=0,
                             figsize=(3.2 * len(HEADLINE), 3), sharey=False)
    for ax in axes.ravel():
        ax.grid(axis="y", alpha=0.3)
        ax.set_xlabel("")
    first = png(axes.ravel()[0].figure)
    recall = pd.DataFrame(result["recall_by_class"])
    ax = recall.plot.bar(figsize=(max(6, 0.6 * len(recall)), 3.2), rot=0, ylim=(0, 1.05))
    ax.set_xlabel("class")
    ax.set_ylabel("recall")
    ax.set_title("recall per class, by group")
    ax.legend(title="group", fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    plt.tight_layout()
    return first, png(ax.figure)


def report_tables(result: dict[str, Any]) -> dict[str, Table]:
    """The report's tables: metrics by group, their largest gaps, recall and selection rate per class."""
    names, classes = result["groups"], result["class_names"]
    pct = {m: ".4f" for m in (*_LABELS.values(), "min", "max", "difference", "ratio", *names, "gap")}
    rows = [{"group": g, "count": v["count"], **{_LABELS[m]: v[m] for m in HEADLINE}}
            for g, v in [*result["by_group"].items(), ("(all)", result["overall"])]]
    tables = {"groups": Table(rows, ["group", "count", *_LABELS.values()], pct),
              "gaps": Table([{"metric": _LABELS[m], **result["gaps"][m]} for m in HEADLINE],
                            ["metric", "min", "min_group", "max", "max_group", "difference", "ratio"], pct)}
    for metric in ("recall", "selection_rate"):
        rows = [{"class": c, **{g: result[f"{metric}_by_class"][g][c] for g in names},
                 "gap": result["gaps"][f"{metric}[{i}]"]["difference"]} for i, c in enumerate(classes)]
        tables[metric] = Table(rows, ["class", *names, "gap"], pct)
    return tables


def report_images(result: dict[str, Any]) -> dict[str, bytes]:
    """The report's figures: bar charts of the metrics and of recall by group, a confusion matrix per group."""
    headline_png, recall_png = _bar_charts(result)
    return {"metrics": headline_png, "recall": recall_png,
            **{f"confusion {g}": plot_confusion(result["confusion_matrix"][g], result["class_names"], f"group {g}")
               for g in result["groups"]}}


# --------------------------------------------------------------------------- run


def evaluate_fairness(run_dir: str | Path | None, data: str, groups: str, split: str = "test",
                      min_group_size: int = MIN_GROUP_SIZE, runs_dir: str | Path = "runs") -> dict[str, Any]:
    """The run's model on the labelled set ``data``, per group of ``groups`` (a CSV column of
    ``data`` or a side file); stores the "fairness" analysis in the run (template
    ``analysis/fairness.html``) and returns its data."""
    from train.data import load_dataset
    from train.runs import load_run

    run = load_run(run_dir, runs_dir)
    h, w, c = run.input_shape
    side = is_group_file(groups)
    ds = load_dataset(data, split=split, image_size=(h, w), colour="rgb" if c == 3 else "grey",
                      group_column=None if side else groups)
    if ds.y is None:
        raise InputError(f"{data}: has no labels; per-group metrics need them")
    if ds.class_names != run.class_names:
        raise InputError(f"{data}: classes {ds.class_names} differ from the model's {run.class_names}")
    group_of = read_group_file(groups, len(ds), data) if side else ds.groups
    y_pred = predict_proba(run.model, ds.x).argmax(1)
    result = group_metrics(ds.y, y_pred, group_of, run.class_names, min_group_size)
    source = f"side file {groups}" if side else f"column {groups!r} of {data}"
    result.update({"run": str(run.path), "data": str(data), "group_source": source})
    add_analysis(run.path, "fairness", "Fairness: metrics per group", result, tables=report_tables(result),
                 images=report_images(result))
    return result

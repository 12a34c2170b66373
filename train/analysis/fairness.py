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
Exit status 2 for bad input, 3 for a missing or incomplete run.
"""
from __future__ import annotations

import argparse
import functools
import html
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from train.report import _img, _plt, _png, _table, add_analysis, plot_confusion, predict_proba

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
    """The group of each of ``n`` samples, as strings, from a side file (see the module docstring)."""
    import pandas as pd

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in GROUP_FILE_SUFFIXES:
        raise ValueError(f"{path}: a group file must be one of {', '.join(GROUP_FILE_SUFFIXES)}")
    if not path.is_file():
        raise ValueError(f"{path}: group file not found")
    index = None
    if suffix == ".npy":
        groups = np.load(path, allow_pickle=False)
        if groups.ndim != 1:
            raise ValueError(f"{path}: expected a 1-D array of groups, got shape {groups.shape}")
    elif suffix == ".txt":
        groups = np.array(path.read_text(encoding="utf-8").rstrip("\r\n").splitlines())
    else:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
        if "group" not in table.columns:
            raise ValueError(f"{path}: no 'group' column; its columns are {', '.join(map(repr, table.columns))} "
                             "(expected 'group', or 'index,group')")
        groups = table["group"].to_numpy()
        if "index" in table.columns:
            try:
                index = table["index"].astype(np.int64).to_numpy()
            except ValueError as e:
                raise ValueError(f"{path}: column 'index' must hold whole numbers (0-based sample rows)") from e
    if len(groups) != n:
        raise ValueError(f"{path}: {len(groups)} group entries, but {data} has {n} samples; one per sample is needed")
    groups = np.array([str(g).strip() for g in groups])
    if index is None:
        return groups
    if index.min() < 0 or index.max() >= n or len(np.unique(index)) != n:
        raise ValueError(f"{path}: column 'index' must list each sample row 0..{n - 1} exactly once")
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


def _bar_charts(result: dict[str, Any]) -> tuple[str, str]:
    """(headline metrics by group, recall per class by group) as base64 PNGs, via pandas plotting."""
    import pandas as pd

    plt = _plt()
    headline = pd.DataFrame(result["by_group"]).T[list(HEADLINE)].rename(columns=_LABELS)
    axes = headline.plot.bar(subplots=True, layout=(1, len(HEADLINE)), legend=False, rot=0,
                             figsize=(3.2 * len(HEADLINE), 3), sharey=False)
    for ax in axes.ravel():
        ax.grid(axis="y", alpha=0.3)
        ax.set_xlabel("")
    first = _png(axes.ravel()[0].figure)
    recall = pd.DataFrame(result["recall_by_class"])
    ax = recall.plot.bar(figsize=(max(6, 0.6 * len(recall)), 3.2), rot=0, ylim=(0, 1.05))
    ax.set_xlabel("class")
    ax.set_ylabel("recall")
    ax.set_title("recall per class, by group")
    ax.legend(title="group", fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    plt.tight_layout()
    return first, _png(ax.figure)


def render_html(result: dict[str, Any], description: str) -> str:
    """The report section: tables, bar charts and the confusion matrix of each group."""
    names, classes = result["groups"], result["class_names"]
    pct = {m: ".4f" for m in (*_LABELS.values(), "min", "max", "difference", "ratio", *names, "gap")}
    parts = [f"<p>{html.escape(description)}</p>"]
    if result["small_groups"]:
        parts.append(f"<p><b>Warning:</b> fewer than {result['min_group_size']} samples in "
                     f"{html.escape(', '.join(result['small_groups']))}; their figures are noisy.</p>")
    rows = [{"group": g, "count": v["count"], **{_LABELS[m]: v[m] for m in HEADLINE}}
            for g, v in [*result["by_group"].items(), ("(all)", result["overall"])]]
    parts.append(_table(rows, ["group", "count", *_LABELS.values()], pct))
    parts.append("<h3>Largest gap between groups</h3>")
    gap_rows = [{"metric": _LABELS[m], **result["gaps"][m]} for m in HEADLINE]
    parts.append(_table(gap_rows, ["metric", "min", "min_group", "max", "max_group", "difference", "ratio"], pct))
    headline_png, recall_png = _bar_charts(result)
    parts.append(_img(headline_png, "metrics by group"))
    for key, title in (("recall_by_class", "Recall per class, by group"),
                       ("selection_rate_by_class", "Selection rate per class (share predicted as the class), by group")):
        metric = key.split("_by_")[0]
        rows = [{"class": c, **{g: result[key][g][c] for g in names},
                 "gap": result["gaps"][f"{metric}[{i}]"]["difference"]} for i, c in enumerate(classes)]
        parts.append(f"<h3>{title}</h3>" + _table(rows, ["class", *names, "gap"], pct))
        if key == "recall_by_class":
            parts.append(_img(recall_png, "recall per class by group"))
    parts.append("<h3>Confusion matrix per group</h3>")
    parts.extend(_img(plot_confusion(result["confusion_matrix"][g], classes, f"group {g}"), f"confusion {g}")
                 for g in names)
    return "\n".join(parts)


# --------------------------------------------------------------------------- run


def evaluate_fairness(run_dir: str | Path | None, data: str, groups: str, split: str = "test",
                      min_group_size: int = MIN_GROUP_SIZE, runs_dir: str | Path = "runs") -> dict[str, Any]:
    """The run's model on the labelled set ``data``, per group of ``groups`` (a CSV column of
    ``data`` or a side file); adds the "fairness" analysis to the run and returns its data."""
    from train.data import load_dataset
    from train.runs import load_run

    run = load_run(run_dir, runs_dir)
    h, w, c = run.input_shape
    side = is_group_file(groups)
    ds = load_dataset(data, split=split, image_size=(h, w), colour="rgb" if c == 3 else "grey",
                      group_column=None if side else groups)
    if ds.y is None:
        raise ValueError(f"{data}: has no labels; per-group metrics need them")
    if ds.class_names != run.class_names:
        raise ValueError(f"{data}: classes {ds.class_names} differ from the model's {run.class_names}")
    group_of = read_group_file(groups, len(ds), data) if side else ds.groups
    y_pred = predict_proba(run.model, ds.x).argmax(1)
    result = group_metrics(ds.y, y_pred, group_of, run.class_names, min_group_size)
    source = f"side file {groups}" if side else f"column {groups!r} of {data}"
    result.update({"run": str(run.path), "data": str(data), "group_source": source})
    description = (f"Model {run.config.model} ({run.path.name}) on {data} ({len(ds)} samples), grouped by "
                   f"{source}: {len(result['groups'])} groups. Metrics computed with fairlearn's MetricFrame; "
                   "gap = max - min over the groups, ratio = min / max.")
    add_analysis(run.path, "fairness", "Fairness: metrics per group", render_html(result, description), result)
    return result


def main(argv: list[str] | None = None) -> int:
    from train.data import DataError
    from train.runs import RunError

    p = argparse.ArgumentParser(prog="python -m train.fairness", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", help="run directory (default: the latest under --runs-dir)")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--data", required=True, help="labelled dataset to evaluate (see train.data.load_dataset)")
    p.add_argument("--split", default="test", help="split of --data where it has splits (default: test)")
    p.add_argument("--groups", required=True, metavar="COLUMN_OR_FILE",
                   help="CSV column of --data holding the group, or a side file (.csv/.txt/.npy)")
    p.add_argument("--min-group-size", type=int, default=MIN_GROUP_SIZE,
                   help=f"warn about groups smaller than this (default {MIN_GROUP_SIZE})")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = evaluate_fairness(args.run, args.data, args.groups, args.split, args.min_group_size, args.runs_dir)
    except RunError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except (DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    if not args.json:
        print(f"\nreport: {Path(result['run']) / 'report.html'}")
    return 0

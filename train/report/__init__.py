"""Evaluation: metrics (scikit-learn), plots (matplotlib) and a self-contained HTML report.

    python -m train.evaluate                         # the latest run, on its validation and test splits
    python -m train.evaluate --run runs/X --data other.csv   # the run's model on another labelled set
    python -m train.evaluate --run runs/X --predict test.csv --out submission.csv   # Kaggle submission

``evaluate_run`` is called at the end of every training run and writes ``metrics.json`` and
``report.html`` into the run directory.
"""
from __future__ import annotations

import argparse
import base64
import html
import io
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- metrics


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, class_names: list[str], top_pairs: int = 10) -> dict[str, Any]:
    """Accuracy, per-class and averaged precision/recall/F1, confusion matrix, one-vs-rest ROC AUC,
    and the most-confused class pairs."""
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support, roc_auc_score

    labels = np.arange(len(class_names))
    y_pred = probs.argmax(axis=1)
    p, r, f, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    out: dict[str, Any] = {"n": int(len(y_true)), "accuracy": float(accuracy_score(y_true, y_pred))}
    for avg in ("macro", "weighted"):
        ap, ar, af, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=avg, zero_division=0)
        out[f"precision_{avg}"], out[f"recall_{avg}"], out[f"f1_{avg}"] = float(ap), float(ar), float(af)
    out["per_class"] = [
        {"label": name, "index": int(i), "precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(support[i])}
        for i, name in enumerate(class_names)
    ]
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    out["confusion_matrix"] = cm.tolist()
    present = np.unique(y_true)
    if len(present) > 1:
        auc = {}
        for i in present:
            auc[class_names[int(i)]] = float(roc_auc_score(y_true == i, probs[:, i]))
        out["roc_auc"] = auc
        out["roc_auc_macro"] = float(np.mean(list(auc.values())))
    # Most-confused pairs, counted both ways (3 taken for 8 and 8 for 3 form the pair 3/8).
    off = cm + cm.T
    np.fill_diagonal(off, 0)
    pairs = []
    for i, j in zip(*np.triu_indices(len(labels), k=1)):
        if off[i, j]:
            pairs.append(
                {"pair": f"{class_names[i]}/{class_names[j]}", "total": int(off[i, j]),
                 "first_as_second": int(cm[i, j]), "second_as_first": int(cm[j, i])}
            )
    out["confused_pairs"] = sorted(pairs, key=lambda d: -d["total"])[:top_pairs]
    return out


def predict_proba(model, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    return np.asarray(model.predict(x.astype(np.float32), batch_size=batch_size, verbose=0), dtype=np.float64)


def inference_timing(model, x: np.ndarray, n_single: int = 100, batch_size: int = 256) -> dict[str, float]:
    """Keras inference time per image: batch 1 (p50/p95 over ``n_single`` calls) and batched."""
    from train._tf import tf

    x = x.astype(np.float32)
    fn = tf.function(lambda t: model(t, training=False))
    fn(x[:1])
    fn(x[:batch_size])  # trace both shapes before timing
    singles = []
    for i in range(min(n_single, len(x))):
        t = time.perf_counter()
        fn(x[i : i + 1]).numpy()
        singles.append((time.perf_counter() - t) * 1e3)
    xb = x[: max(batch_size, 1)]
    reps = 3
    t = time.perf_counter()
    for _ in range(reps):
        fn(xb).numpy()
    batched = (time.perf_counter() - t) * 1e3 / (reps * len(xb))
    return {
        "batch1_ms_p50": float(np.percentile(singles, 50)),
        "batch1_ms_p95": float(np.percentile(singles, 95)),
        "batched_ms_per_image": float(batched),
        "batch_size": int(len(xb)),
    }


# --------------------------------------------------------------------------- plots


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_history(history: dict[str, list[float]]) -> str | None:
    if not history.get("loss"):
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    epochs = np.arange(1, len(history["loss"]) + 1)
    for ax, key in zip(axes, ("loss", "accuracy")):
        for prefix, style in (("", "-"), ("val_", "--")):
            if prefix + key in history:
                ax.plot(epochs, history[prefix + key], style, label=(prefix or "train_") + key)
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.legend()
        ax.grid(alpha=0.3)
    return _png(fig)


def plot_confusion(cm: list[list[int]], class_names: list[str], title: str) -> str:
    from sklearn.metrics import ConfusionMatrixDisplay

    plt = _plt()
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(max(5, 0.55 * n + 2), max(4, 0.5 * n + 1.5)))
    ConfusionMatrixDisplay(np.array(cm), display_labels=class_names).plot(ax=ax, colorbar=False, values_format="d")
    ax.set_title(title)
    plt.setp(ax.get_xticklabels(), rotation=45, ha="right")
    return _png(fig)


def plot_roc(y_true: np.ndarray, probs: np.ndarray, class_names: list[str], title: str) -> str | None:
    from sklearn.metrics import RocCurveDisplay

    if len(np.unique(y_true)) < 2:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 5))
    for i, name in enumerate(class_names):
        if (y_true == i).any():
            RocCurveDisplay.from_predictions(y_true == i, probs[:, i], name=name, ax=ax, plot_chance_level=(i == 0))
    ax.set_title(title)
    ax.legend(fontsize=7, loc="lower right")
    return _png(fig)


def plot_gallery(x: np.ndarray, y_true: np.ndarray, probs: np.ndarray, class_names: list[str], limit: int = 32) -> str | None:
    """Misclassified images, most confident mistakes first, titled 'true -> predicted (score)'."""
    pred = probs.argmax(1)
    wrong = np.flatnonzero(pred != y_true)
    if not len(wrong):
        return None
    wrong = wrong[np.argsort(-probs[wrong, pred[wrong]])][:limit]
    plt = _plt()
    cols = 8
    rows = int(np.ceil(len(wrong) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.3, rows * 1.5), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), wrong):
        img = x[i]
        ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None)
        ax.set_title(f"{class_names[y_true[i]]}->{class_names[pred[i]]}\n{probs[i, pred[i]]:.2f}", fontsize=7)
    return _png(fig)


# --------------------------------------------------------------------------- report


def _table(rows: list[dict], cols: list[str], fmt: dict[str, str] | None = None) -> str:
    fmt = fmt or {}
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = []
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c, "")
            cells.append(f"<td>{format(v, fmt[c]) if c in fmt and isinstance(v, (int, float)) else html.escape(str(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _img(b64: str | None, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">' if b64 else ""


def render_report(title: str, metrics: dict, figures: dict[str, str | None], info: dict, dataset: dict | None,
                  analyses: list[str] = ()) -> str:
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        "th{background:#f3f3f3}img{max-width:100%}h2{border-bottom:1px solid #ddd}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    summary = []
    for split in ("validation", "test"):
        m = metrics.get(split)
        if m:
            summary.append({"split": split, "n": m["n"], "accuracy": m["accuracy"], "macro F1": m["f1_macro"],
                            "weighted F1": m["f1_weighted"], "macro AUC": m.get("roc_auc_macro", float("nan"))})
    parts.append(_table(summary, ["split", "n", "accuracy", "macro F1", "weighted F1", "macro AUC"],
                        {k: ".4f" for k in ("accuracy", "macro F1", "weighted F1", "macro AUC")}))
    facts = {k: info.get(k) for k in ("model", "data", "params", "epochs_run", "train_seconds", "total_seconds") if info.get(k) is not None}
    if "timing" in metrics:
        facts.update({f"inference {k}": round(v, 3) for k, v in metrics["timing"].items()})
    parts.append(_table([{"fact": k, "value": v} for k, v in facts.items()], ["fact", "value"]))
    if figures.get("history"):
        parts.append("<h2>Loss and accuracy</h2>" + _img(figures["history"], "training curves"))
    for split in ("validation", "test"):
        m = metrics.get(split)
        if not m:
            continue
        parts.append(f"<h2>{split.capitalize()}: per class</h2>")
        parts.append(_table(m["per_class"], ["label", "support", "precision", "recall", "f1"],
                            {"precision": ".4f", "recall": ".4f", "f1": ".4f"}))
        parts.append(_img(figures.get(f"{split}_confusion"), f"{split} confusion matrix"))
        parts.append(_img(figures.get(f"{split}_roc"), f"{split} ROC"))
        if m["confused_pairs"]:
            parts.append("<h3>Most confused pairs (a/b: a taken for b, b taken for a)</h3>"
                         + _table(m["confused_pairs"], ["pair", "total", "first_as_second", "second_as_first"]))
        if figures.get(f"{split}_gallery"):
            parts.append("<h3>Misclassified (most confident first)</h3>" + _img(figures[f"{split}_gallery"], "misclassified"))
        if figures.get(f"{split}_gradcam"):
            parts.append("<h3>Grad-CAM of the misclassified: where the predicted class's evidence lies</h3>"
                         + _img(figures[f"{split}_gradcam"], "Grad-CAM of misclassified"))
    if dataset:
        parts.append("<h2>Training data</h2>")
        per = dataset.get("per_class") or []
        if per:
            parts.append(_table(per, list(per[0].keys()), {"percent": ".2f"}))
        rest = {k: v for k, v in dataset.items() if k != "per_class" and not isinstance(v, (list, dict))}
        parts.append(_table([{"fact": k, "value": v} for k, v in rest.items()], ["fact", "value"]))
    parts.extend(analyses)
    parts.append("</body></html>")
    return "\n".join(parts)


# --------------------------------------------------------------------------- analyses

ANALYSIS_DIR = "analysis"


def _section(name: str, title: str, body_html: str) -> str:
    return (f"<!-- analysis:{name} --><section id='{html.escape(name)}'><h2>{html.escape(title)}</h2>\n"
            f"{body_html}\n</section><!-- /analysis:{name} -->")


def analysis_sections(run_dir: str | Path) -> list[str]:
    """The report sections of the analyses stored with a run (``analysis/*.json``), by name."""
    out = []
    for f in sorted((Path(run_dir) / ANALYSIS_DIR).glob("*.json")):
        a = json.loads(f.read_text())
        out.append(_section(a["name"], a["title"], a["html"]))
    return out


def add_analysis(run_dir: str | Path, name: str, title: str, body_html: str, data: Any = None) -> Path:
    """Store an analysis of a run (robustness, fairness, explanations...) as ``analysis/<name>.json``
    and put its section into ``report.html`` (replacing an earlier one of the same name).

    ``body_html`` is self-contained (images as base64, e.g. from :func:`_png`); ``data`` holds the
    figures behind it. Later re-evaluations keep the section.
    """
    import re

    run_dir = Path(run_dir)
    (run_dir / ANALYSIS_DIR).mkdir(exist_ok=True)
    path = run_dir / ANALYSIS_DIR / f"{name}.json"
    path.write_text(json.dumps({"name": name, "title": title, "html": body_html, "data": data}, default=_json_default)
                    + "\n")
    report = run_dir / "report.html"
    if report.is_file():
        text = report.read_text()
        section = _section(name, title, body_html)
        pattern = re.compile(rf"<!-- analysis:{re.escape(name)} -->.*?<!-- /analysis:{re.escape(name)} -->", re.S)
        text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.replace("</body>", section + "\n</body>")
        report.write_text(text)
    return path


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def evaluate_run(run_dir: str | Path, *, model=None, splits: dict | None = None, timing: bool = True) -> dict[str, Any]:
    """Evaluate a run's model on its validation and test splits; write metrics.json and report.html."""
    from train.analysis.explain import gradcam_gallery
    from train.runs import load_run

    run = load_run(run_dir)
    model = model if model is not None else run.model
    splits = splits if splits is not None else run.splits()
    class_names = run.class_names
    history = json.loads((run.path / "history.json").read_text()) if (run.path / "history.json").is_file() else {}
    dataset = json.loads((run.path / "dataset.json").read_text()) if (run.path / "dataset.json").is_file() else None

    metrics: dict[str, Any] = {"model": run.config.model, "data": run.config.data}
    figures: dict[str, str | None] = {"history": plot_history(history)}
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
    info = {**run.info, "model": run.config.model, "data": run.config.data}
    metrics["train_seconds"] = info.get("train_seconds")
    (run.path / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    title = f"{run.config.model} on {Path(run.config.data).name or run.config.data}: {run.path.name}"
    (run.path / "report.html").write_text(render_report(title, metrics, figures, info, dataset,
                                                        analysis_sections(run.path)))
    return metrics


def evaluate_on(run_dir: str | Path | None, spec: str, split: str = "test") -> dict[str, Any]:
    """The run's model on another labelled dataset (resized/colour-converted to the model's input)."""
    from train.data import load_dataset
    from train.runs import load_run

    run = load_run(run_dir)
    h, w, c = run.input_shape
    ds = load_dataset(spec, split=split, image_size=(h, w), colour="rgb" if c == 3 else "grey")
    if ds.y is None:
        raise ValueError(f"{spec}: has no labels; use --predict to write predictions instead")
    if ds.class_names != run.class_names:
        raise ValueError(f"{spec}: classes {ds.class_names} differ from the model's {run.class_names}")
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


def main(argv: list[str] | None = None) -> int:
    from train.data import DataError
    from train.runs import RunError, load_run

    p = argparse.ArgumentParser(prog="python -m train.evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", help="run directory (default: the latest under --runs-dir)")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--data", help="evaluate on this labelled dataset instead of the run's splits")
    p.add_argument("--split", default="test", choices=["train", "test"], help="split of --data to use")
    p.add_argument("--predict", metavar="CSV", help="unlabelled Kaggle test CSV to predict")
    p.add_argument("--out", default="submission.csv", help="where --predict writes ImageId,Label")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        run_dir = args.run or load_run(None, args.runs_dir).path
        if args.predict:
            print(predict_to_submission(run_dir, args.predict, args.out))
        elif args.data:
            m = evaluate_on(run_dir, args.data, args.split)
            print(json.dumps({k: v for k, v in m.items() if k not in ("confusion_matrix", "per_class")}, indent=2))
        else:
            m = evaluate_run(run_dir)
            for split in ("validation", "test"):
                if split in m:
                    print(f"{split:<10} accuracy {m[split]['accuracy']:.4f}  macro F1 {m[split]['f1_macro']:.4f}")
            print(f"report: {Path(run_dir) / 'report.html'}")
    except (RunError, DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0

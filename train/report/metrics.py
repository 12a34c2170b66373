"""Classification metrics (scikit-learn), the model's class probabilities and its inference time."""
from __future__ import annotations

import time
from typing import Any

import numpy as np


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
    out["confused_pairs"] = confused_pairs(cm, class_names)[:top_pairs]
    return out


def confused_pairs(cm: np.ndarray, class_names: list[str]) -> list[dict[str, Any]]:
    """Class pairs the model mixes up, counted both ways (3 taken for 8 and 8 for 3 form the pair
    3/8), most confused first."""
    off = cm + cm.T
    np.fill_diagonal(off, 0)
    pairs = []
    for i, j in zip(*np.triu_indices(len(class_names), k=1)):
        if off[i, j]:
            pairs.append(
                {"pair": f"{class_names[i]}/{class_names[j]}", "total": int(off[i, j]),
                 "first_as_second": int(cm[i, j]), "second_as_first": int(cm[j, i])}
            )
    return sorted(pairs, key=lambda d: -d["total"])


def predict_proba(model, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Class probabilities of a Keras model for raw 0..255 images, as float64."""
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

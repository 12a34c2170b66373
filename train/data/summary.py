"""What a Dataset holds: counts per class, pixel statistics, class imbalance, groups.

:func:`summarize` returns plain Python values (JSON-ready); :func:`format_summary` is the text table
``python -m train.data summary`` prints.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from train.data.dataset import Dataset

logger = logging.getLogger(__name__)

__all__ = ["format_summary", "summarize"]


def _pixel_histograms(x: np.ndarray, chunk: int = 1 << 20) -> np.ndarray:
    channels = x.shape[-1]
    flat = x.reshape(-1, channels)
    hist = np.zeros((channels, 256), np.int64)
    for start in range(0, len(flat), chunk):
        block = flat[start: start + chunk]
        for c in range(channels):
            hist[c] += np.bincount(block[:, c], minlength=256)
    return hist


def _hist_stats(hist: np.ndarray) -> dict[str, float]:
    values = np.arange(256, dtype=np.float64)
    n = hist.sum()
    if not n:
        return {"mean": float("nan"), "std": float("nan"), "min": float("nan"), "max": float("nan")}
    mean = float(hist @ values / n)
    std = float(np.sqrt(hist @ (values - mean) ** 2 / n))
    nz = np.flatnonzero(hist)
    return {"mean": mean, "std": std, "min": int(nz[0]), "max": int(nz[-1])}


def summarize(ds: Dataset, imbalance_threshold: float = 1.5) -> dict[str, Any]:
    """Counts per class, pixel statistics and class imbalance of a Dataset, as plain Python values.

    Logs a warning when the imbalance ratio (largest / smallest class count) exceeds
    ``imbalance_threshold`` or a class has no samples.
    """
    h, w, c = ds.image_shape
    hist = _pixel_histograms(ds.x)
    overall = _hist_stats(hist.sum(axis=0))
    per_channel = [_hist_stats(hc) for hc in hist]
    out: dict[str, Any] = {
        "source": ds.source,
        "n": len(ds),
        "image_shape": [h, w, c],
        "height": h, "width": w, "channels": c,
        "colour": "rgb" if c == 3 else "grey",
        "num_classes": ds.num_classes,
        "labelled": ds.y is not None,
        "pixel_mean": overall["mean"], "pixel_std": overall["std"],
        "pixel_min": overall["min"], "pixel_max": overall["max"],
        "channel_mean": [s["mean"] for s in per_channel],
        "channel_std": [s["std"] for s in per_channel],
        "classes": [], "imbalance_ratio": None, "imbalance_threshold": float(imbalance_threshold),
        "imbalanced": False, "empty_classes": [], "groups": None,
    }
    if ds.y is not None:
        counts = ds.class_counts()
        n = max(len(ds), 1)
        out["classes"] = [{"label": i, "name": name, "count": int(k), "percent": 100.0 * int(k) / n}
                          for i, (name, k) in enumerate(zip(ds.class_names, counts))]
        empty = [ds.class_names[i] for i in np.flatnonzero(counts == 0)]
        out["empty_classes"] = empty
        if counts.size:
            ratio = float("inf") if empty else float(counts.max() / counts.min())
            out["imbalance_ratio"] = ratio
            out["imbalanced"] = ratio > imbalance_threshold
            if empty:
                logger.warning("%s: %d class(es) have no samples: %s", ds.source, len(empty), ", ".join(empty))
            elif out["imbalanced"]:
                logger.warning("%s: class imbalance ratio %.2f (largest/smallest class) exceeds %.2f; "
                               "consider stratified splits, class weights or resampling",
                               ds.source, ratio, imbalance_threshold)
    if ds.groups is not None:
        names, counts = np.unique(ds.groups, return_counts=True)
        out["groups"] = {str(g): int(k) for g, k in zip(names, counts)}
    return out


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as a text table (label, name, count, percent), like seed 000's Table 1."""
    s = summary
    lines = [
        f"Dataset: {s['source']}",
        f"Samples: {s['n']:,}   image: {s['height']}x{s['width']}x{s['channels']} ({s['colour']})",
        f"Pixels (0-255): mean {s['pixel_mean']:.2f}  std {s['pixel_std']:.2f}  "
        f"min {s['pixel_min']}  max {s['pixel_max']}",
    ]
    if s["channels"] > 1:
        lines.append("Per channel (R, G, B): mean " + ", ".join(f"{m:.2f}" for m in s["channel_mean"])
                     + "  std " + ", ".join(f"{v:.2f}" for v in s["channel_std"]))
    if not s["labelled"]:
        lines.append("Unlabelled: no class counts.")
    else:
        rows = [(str(c["label"]), c["name"], f"{c['count']:,}", f"{c['percent']:.2f}%") for c in s["classes"]]
        rows.append(("Total", "", f"{sum(c['count'] for c in s['classes']):,}", "100.00%" if s["n"] else "-"))
        head = ("Label", "Name", "Count", "Percent")
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
        fmt = lambda r: "  ".join((r[i].ljust if i < 2 else r[i].rjust)(widths[i]) for i in range(4))  # noqa: E731
        lines += ["", fmt(head), "  ".join("-" * wd for wd in widths)]
        lines += [fmt(r) for r in rows[:-1]] + ["  ".join("-" * wd for wd in widths), fmt(rows[-1])]
        ratio = s["imbalance_ratio"]
        if ratio is not None:
            flag = f"  (above {s['imbalance_threshold']:g}: imbalanced)" if s["imbalanced"] else ""
            lines.append(f"Imbalance ratio (largest/smallest class): {ratio:.2f}{flag}")
        if s["empty_classes"]:
            lines.append(f"Classes with no samples: {', '.join(s['empty_classes'])}")
    if s.get("groups"):
        lines.append("Groups: " + ", ".join(f"{g}: {k:,}" for g, k in s["groups"].items()))
    return "\n".join(lines)

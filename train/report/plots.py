"""Matplotlib figures of the report, each returned as PNG bytes (None where there is nothing to draw).

:func:`pyplot` gives ``matplotlib.pyplot`` on the Agg backend (no display needed), :func:`png`
turns a figure into PNG bytes and closes it, :func:`image_grid` and :func:`show_image` lay out
and draw images the way every gallery of the report does.
"""
from __future__ import annotations

import io

import numpy as np


def pyplot():
    """``matplotlib.pyplot``, on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png(fig) -> bytes:
    """The figure as PNG bytes (90 dpi, tight); the figure is closed."""
    plt = pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def image_grid(rows: int, cols: int, cell: tuple[float, float]):
    """``(figure, axes)``: a ``rows`` x ``cols`` grid of empty panels, each ``cell`` inches (w, h)."""
    fig, axes = pyplot().subplots(rows, cols, figsize=(cols * cell[0], rows * cell[1]), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    return fig, axes


def show_image(ax, img: np.ndarray, title: str | None = None, **imshow) -> None:
    """Draw an (H, W, 1 or 3) image of 0..255 pixels on ``ax``: grey ones with the grey colour map."""
    grey = img.shape[-1] == 1
    ax.imshow(img[..., 0] if grey else img.astype(np.uint8), cmap="gray" if grey else None, **imshow)
    if title is not None:
        ax.set_title(title, fontsize=7)


def plot_history(history: dict[str, list[float]]) -> bytes | None:
    """Loss and accuracy per epoch, training and validation."""
    if not history.get("loss"):
        return None
    fig, axes = pyplot().subplots(1, 2, figsize=(10, 3.5))
    epochs = np.arange(1, len(history["loss"]) + 1)
    for ax, key in zip(axes, ("loss", "accuracy")):
        for prefix, style in (("", "-"), ("val_", "--")):
            if prefix + key in history:
                ax.plot(epochs, history[prefix + key], style, label=(prefix or "train_") + key)
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.legend()
        ax.grid(alpha=0.3)
    return png(fig)


def plot_confusion(cm: list[list[int]], class_names: list[str], title: str) -> bytes:
    """A confusion matrix with its counts."""
    from sklearn.metrics import ConfusionMatrixDisplay

    plt = pyplot()
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(max(5, 0.55 * n + 2), max(4, 0.5 * n + 1.5)))
    ConfusionMatrixDisplay(np.array(cm), display_labels=class_names).plot(ax=ax, colorbar=False, values_format="d")
    ax.set_title(title)
    plt.setp(ax.get_xticklabels(), rotation=45, ha="right")
    return png(fig)


def plot_roc(y_true: np.ndarray, probs: np.ndarray, class_names: list[str], title: str) -> bytes | None:
    """One-vs-rest ROC curves of the classes present in ``y_true``."""
    from sklearn.metrics import RocCurveDisplay

    if len(np.unique(y_true)) < 2:
        return None
    fig, ax = pyplot().subplots(figsize=(6, 5))
    for i, name in enumerate(class_names):
        if (y_true == i).any():
            RocCurveDisplay.from_predictions(y_true == i, probs[:, i], name=name, ax=ax, plot_chance_level=(i == 0))
    ax.set_title(title)
    ax.legend(fontsize=7, loc="lower right")
    return png(fig)


def plot_gallery(x: np.ndarray, y_true: np.ndarray, probs: np.ndarray, class_names: list[str], limit: int = 32) -> bytes | None:
    """Misclassified images, most confident mistakes first, titled 'true -> predicted (score)'."""
    pred = probs.argmax(1)
    wrong = np.flatnonzero(pred != y_true)
    if not len(wrong):
        return None
    wrong = wrong[np.argsort(-probs[wrong, pred[wrong]])][:limit]
    cols = 8
    fig, axes = image_grid(int(np.ceil(len(wrong) / cols)), cols, (1.3, 1.5))
    for ax, i in zip(axes.ravel(), wrong):
        show_image(ax, x[i], f"{class_names[y_true[i]]}->{class_names[pred[i]]}\n{probs[i, pred[i]]:.2f}")
    return png(fig)

"""Explanations: Grad-CAM and gradient saliency (optionally SmoothGrad) for a run's Keras model.

    python -m train.explain --run runs/X                      # 16 correct test predictions, by class
    python -m train.explain --run runs/X --misclassified      # ... and the most confident mistakes
    python -m train.explain --run runs/X --layer conv1 --smoothgrad 25

Stores the "explanations" analysis in the run (``analysis/explanations.json`` and its images) and
renders its report.html again, with an "Explanations" section: for each image the image itself, its
Grad-CAM overlay and its saliency map, for the predicted class. The command line is train/explain.py.

Grad-CAM (Selvaraju et al. 2017) weighs a convolutional layer's feature maps by the mean gradient
of the class score (the logit, before softmax) and keeps the positive part; by default the layer is
the last convolution, taken through the layers after it that keep its spatial size (BN, ReLU, a
residual add: ``conv2`` in LeNet-5, ``s3b2_out`` in resnet_small). Saliency (Simonyan et al. 2013)
is the absolute gradient of the class score with respect to the input pixels; SmoothGrad (Smilkov
et al. 2017) averages that gradient over noisy copies of the image. Every map is scaled to [0, 1].
"""
from __future__ import annotations

import difflib
import logging
from pathlib import Path
from typing import Any

import numpy as np

from train.errors import InputError, UsageError
from train.report import add_analysis, image_grid, png, predict_proba, show_image

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- layers


def _spatial(layer) -> bool:
    """A layer with a 4-D (batch, height, width, channels) output where the model calls it."""
    return len(layer.get_output_shape_at(-1)) == 4


def _conv_like(layer) -> bool:
    """A convolution, or a nested backbone model (``transfer``) that outputs feature maps."""
    from train._tf import keras

    if isinstance(layer, keras.Model):
        return _spatial(layer)
    return isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D))


def conv_layer_names(model) -> list[str]:
    """Names of the model's convolutional layers (top level; a nested backbone counts as one)."""
    return [layer.name for layer in model.layers if _conv_like(layer)]


def find_layer(model, name: str | None = None):
    """The layer Grad-CAM reads: ``name``, or the last convolution followed through the layers
    after it that keep its spatial size. Raises :class:`~train.errors.UsageError` (a ``ValueError``)
    listing the conv layers."""
    convs = conv_layer_names(model)
    if name is not None:
        names = [layer.name for layer in model.layers]
        if name not in names:
            close = difflib.get_close_matches(name, names, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise UsageError(f"{model.name} has no layer {name!r}.{hint} Its conv layers: {', '.join(convs) or 'none'}")
        layer = model.get_layer(name)
        if not _spatial(layer):
            raise UsageError(f"{model.name}: layer {name!r} outputs {layer.get_output_shape_at(-1)}, not feature maps "
                             f"(batch, height, width, channels); its conv layers: {', '.join(convs) or 'none'}")
        return layer
    if not convs:
        raise UsageError(f"{model.name} has no convolutional layer for Grad-CAM; pick a layer with a 4-D output")
    layers = model.layers
    i = [layer.name for layer in layers].index(convs[-1])
    size = layers[i].get_output_shape_at(-1)[1:3]
    while i + 1 < len(layers) and _spatial(layers[i + 1]) and layers[i + 1].get_output_shape_at(-1)[1:3] == size:
        i += 1
    return layers[i]


def _cell_centres(model, layer) -> list[tuple[float, float]]:
    """Per axis (rows, columns), ``(stride, offset)``: cell ``i`` of ``layer``'s feature map is
    centred on input coordinate ``stride * i + offset`` (pixel ``p`` spans [p, p + 1]).

    Worked out through the convolutions and poolings on the path from the input (their padding
    shifts the maps: LeNet-5's ``conv2`` cells sit on pixels 5, 7, ..., 23, not spread over 0..28).
    A layer of another kind that changes the size (a resize, a nested backbone) ends the reckoning:
    then the map is taken to span the whole input, as plain upsampling assumes.
    """
    from train._tf import keras

    chain = [layer]
    while True:
        inbound = chain[-1].inbound_nodes[-1].inbound_layers
        inbound = inbound if isinstance(inbound, list) else [inbound]
        if not inbound:
            break
        chain.append(inbound[-1])  # of an Add (shortcut, residual): the residual branch
    in_size = chain[-1].get_output_shape_at(-1)[1:3]
    out_size = layer.get_output_shape_at(-1)[1:3]
    axes = [(1.0, 0.5), (1.0, 0.5)]
    windowed = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D,
                keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)
    for prev, cur in zip(chain[::-1], chain[-2::-1]):
        n_in, n_out = prev.get_output_shape_at(-1)[1:3], cur.get_output_shape_at(-1)[1:3]
        if isinstance(cur, windowed):
            cfg = cur.get_config()
            kernel = cfg.get("kernel_size") or cfg["pool_size"]
            dilation = cfg.get("dilation_rate", (1, 1))
            for a in range(2):
                k = dilation[a] * (kernel[a] - 1) + 1
                st = cfg["strides"][a]
                pad = max((n_out[a] - 1) * st + k - n_in[a], 0) // 2 if cfg["padding"] == "same" else 0
                stride, offset = axes[a]
                axes[a] = (stride * st, stride * ((k - 1) / 2 - pad) + offset)
        elif n_in != n_out:
            return [(n / m, n / m / 2) for n, m in zip(in_size, out_size)]
    return axes


def _to_input(cams: np.ndarray, centres: list[tuple[float, float]], size: tuple[int, int]) -> np.ndarray:
    """Feature-map heatmaps (N, h, w) resampled (bilinear) onto the input's (H, W) pixel grid."""
    import cv2

    (sy, oy), (sx, ox) = centres
    rows = ((np.arange(size[0]) + 0.5 - oy) / sy).astype(np.float32)
    cols = ((np.arange(size[1]) + 0.5 - ox) / sx).astype(np.float32)
    map_x, map_y = np.meshgrid(cols, rows)
    return np.stack([cv2.remap(c, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
                     for c in cams.astype(np.float32)])


def _score_tensor(model):
    """The class scores to differentiate: the logits feeding a final softmax, else log(output)."""
    from train._tf import keras, tf

    last = model.layers[-1]
    if isinstance(last, keras.layers.Activation) and last.get_config()["activation"] == "softmax":
        return last.input
    return tf.math.log(model.output + 1e-12)


def _classes(model, x: np.ndarray, class_index) -> np.ndarray:
    if class_index is None:
        return predict_proba(model, x).argmax(1)
    return np.broadcast_to(np.asarray(class_index, dtype=np.int64), (len(x),))


def _normalise(maps: np.ndarray) -> np.ndarray:
    """Scale each map to [0, 1] by its maximum (an all-zero map stays zero)."""
    peak = maps.reshape(len(maps), -1).max(axis=1).reshape(-1, 1, 1)
    return np.divide(maps, peak, out=np.zeros_like(maps), where=peak > 0)


# --------------------------------------------------------------------------- maps


def grad_cam(model, x: np.ndarray, class_index=None, layer: str | None = None, batch_size: int = 128) -> np.ndarray:
    """Grad-CAM heatmaps, (N, H, W) float32 in [0, 1] at the input's size.

    x: raw 0..255 images (N, H, W, C); class_index: one class or one per image (default: the
    predicted class); layer: a layer name (default: see :func:`find_layer`).
    """
    from train._tf import keras, tf

    target = find_layer(model, layer)
    cams_model = keras.Model(model.inputs, [target.get_output_at(-1), _score_tensor(model)])
    x = np.asarray(x, dtype=np.float32)
    classes = _classes(model, x, class_index)
    centres = _cell_centres(model, target)
    out = []
    for start in range(0, len(x), batch_size):
        xb = tf.constant(x[start:start + batch_size])
        with tf.GradientTape() as tape:
            feats, scores = cams_model(xb, training=False)
            score = tf.gather(scores, classes[start:start + batch_size], axis=1, batch_dims=1)
        grads = tape.gradient(score, feats)
        weights = tf.reduce_mean(grads, axis=(1, 2))
        cam = tf.nn.relu(tf.einsum("bhwc,bc->bhw", feats, weights))
        out.append(_to_input(cam.numpy(), centres, x.shape[1:3]))
    return _normalise(np.concatenate(out).astype(np.float32))


def saliency(model, x: np.ndarray, class_index=None, smoothgrad: int = 0, noise: float = 0.15,
             seed: int = 0, batch_size: int = 128) -> np.ndarray:
    """Gradient saliency, (N, H, W) float32 in [0, 1]: |d score / d pixel|, max over channels.

    smoothgrad: average the gradient over this many copies with Gaussian noise of standard deviation
    ``noise`` x 255 (0: the plain gradient).
    """
    from train._tf import keras, tf

    if smoothgrad < 0 or noise < 0:
        raise UsageError(f"smoothgrad and noise must be >= 0; got smoothgrad={smoothgrad}, noise={noise}")
    score_model = keras.Model(model.inputs, _score_tensor(model))
    x = np.asarray(x, dtype=np.float32)
    classes = _classes(model, x, class_index)
    rng = np.random.default_rng(seed)
    out = []
    for start in range(0, len(x), batch_size):
        xb, cb = x[start:start + batch_size], classes[start:start + batch_size]
        copies = [xb] if not smoothgrad else [xb + rng.normal(0, noise * 255, xb.shape).astype(np.float32)
                                              for _ in range(smoothgrad)]
        total = 0
        for xc in copies:
            xt = tf.constant(xc)
            with tf.GradientTape() as tape:
                tape.watch(xt)
                score = tf.gather(score_model(xt, training=False), cb, axis=1, batch_dims=1)
            total = total + tape.gradient(score, xt).numpy()
        out.append(np.abs(total / len(copies)).max(axis=-1))
    return _normalise(np.concatenate(out).astype(np.float32))


# --------------------------------------------------------------------------- figures


def explanation_figure(x: np.ndarray, titles: list[str], cams: np.ndarray, saliencies: np.ndarray | None = None,
                       per_row: int = 4):
    """A matplotlib figure: per image, the image, its Grad-CAM overlay and (if given) its saliency."""
    panels = 2 if saliencies is None else 3
    fig, axes = image_grid(int(np.ceil(len(x) / per_row)), per_row * panels, (1.25, 1.55))
    for k, img in enumerate(x):
        row, col = divmod(k, per_row)
        ax = axes[row, col * panels: (col + 1) * panels]
        show_image(ax[0], img, titles[k])
        show_image(ax[1], img)
        ax[1].imshow(cams[k], cmap="jet", alpha=0.5, vmin=0, vmax=1)
        ax[1].set_title("Grad-CAM", fontsize=7)
        if saliencies is not None:
            ax[2].imshow(saliencies[k], cmap="hot", vmin=0, vmax=1)
            ax[2].set_title("saliency", fontsize=7)
    return fig


def _title(class_names: list[str], y: int, pred: int, score: float) -> str:
    return f"{class_names[y]}->{class_names[pred]} {score:.2f}" if y != pred else f"{class_names[y]} {score:.2f}"


def misclassified(y_true: np.ndarray, probs: np.ndarray, limit: int) -> np.ndarray:
    """Indices of the misclassified samples, most confident mistakes first, at most ``limit``."""
    pred = probs.argmax(1)
    wrong = np.flatnonzero(pred != y_true)
    return wrong[np.argsort(-probs[wrong, pred[wrong]], kind="stable")][:limit]


def correct_by_class(y_true: np.ndarray, probs: np.ndarray, limit: int, seed: int = 0) -> np.ndarray:
    """Up to ``limit`` correctly classified samples, drawn at random class by class in turn."""
    rng = np.random.default_rng(seed)
    right = probs.argmax(1) == y_true
    pools = [list(rng.permutation(np.flatnonzero(right & (y_true == c)))) for c in np.unique(y_true)]
    picked: list[int] = []
    while len(picked) < limit and any(pools):
        picked += [pool.pop() for pool in pools if pool][: limit - len(picked)]
    return np.array(sorted(picked, key=lambda i: (y_true[i], i)), dtype=np.int64)


def gradcam_gallery(model, x: np.ndarray, y_true: np.ndarray, probs: np.ndarray, class_names: list[str],
                    limit: int = 16, layer: str | None = None) -> bytes | None:
    """Grad-CAM of the most confident mistakes as PNG bytes (None when nothing is misclassified)."""
    idx = misclassified(y_true, probs, limit)
    if not len(idx):
        return None
    pred = probs.argmax(1)
    cams = grad_cam(model, x[idx], pred[idx], layer)
    titles = [_title(class_names, y_true[i], pred[i], probs[i, pred[i]]) for i in idx]
    return png(explanation_figure(x[idx], titles, cams))


# --------------------------------------------------------------------------- run


def explain_run(run_dir: str | Path | None, samples: int = 16, misclassified_too: bool = False,
                layer: str | None = None, split: str = "test", smoothgrad: int = 0,
                runs_dir: str | Path = "runs") -> dict[str, Any]:
    """Grad-CAM and saliency for the run's model on its ``split`` ("test" or "val"): ``samples``
    correct predictions stratified by class and, with ``misclassified_too``, as many of the most
    confident mistakes. Stores the "explanations" analysis in the run; returns its data."""
    from train.runs import load_run

    if samples < 1:
        raise UsageError(f"samples must be >= 1; got {samples}")
    if split not in ("test", "val"):
        raise UsageError(f"split must be 'test' or 'val'; got {split!r}")
    run = load_run(run_dir, runs_dir)
    model = run.model
    layer_name = find_layer(model, layer).name
    ds = run.splits().get(split)
    if ds is None or ds.y is None:
        raise InputError(f"{run.path}: the run has no labelled {split} split; try --split val")
    probs = predict_proba(model, ds.x)
    pred = probs.argmax(1)
    names = run.class_names
    galleries = [("Correct predictions, by class", correct_by_class(ds.y, probs, samples))]
    if misclassified_too:
        galleries.append(("Misclassified, most confident first (true->predicted score)",
                          misclassified(ds.y, probs, samples)))
    data: dict[str, Any] = {"run": str(run.path), "split": split, "split_size": len(ds), "layer": layer_name,
                            "smoothgrad": smoothgrad, "galleries": []}
    images: dict[str, bytes] = {}
    for k, (heading, idx) in enumerate(galleries):
        data["galleries"].append({"title": heading, "samples": [
            {"index": int(i), "label": names[ds.y[i]], "predicted": names[pred[i]], "score": float(probs[i, pred[i]])}
            for i in idx]})
        if len(idx):
            cams = grad_cam(model, ds.x[idx], pred[idx], layer_name)
            sal = saliency(model, ds.x[idx], pred[idx], smoothgrad=smoothgrad)
            titles = [_title(names, ds.y[i], pred[i], probs[i, pred[i]]) for i in idx]
            images[f"gallery{k}"] = png(explanation_figure(ds.x[idx], titles, cams, sal))
    add_analysis(run.path, "explanations", "Explanations", data, images=images)
    return data

"""Model optimization for the edge before conversion: pruning, weight clustering and
quantization-aware training, plus the measures of what they did (zeros, distinct weights).

Each step is a free function that takes a tf_keras model and returns a new one; the input model is
never modified (its weights are copied first). The usual chain, as ``train.export`` runs it::

    model = prune(model, train, sparsity=0.8)          # prune_low_magnitude + fine-tune + strip
    model = cluster(model, train, clusters=16)         # optional, keeps the zeros
    model = quantize_aware(model, train)               # optional QAT, keeps zeros and clusters

The conversion to TFLite (post-training quantization) is :mod:`train.export.conversion`.
"""
from __future__ import annotations

import logging
import math
import time

import numpy as np

# Re-exported: ``train.loop.retrain`` imports it from here (``train.export`` is its home now).
from train.export.errors import DataProblem, OptionError

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- helpers


def _tf():
    from train._tf import keras, tf

    return tf, keras


def copy_model(model):
    """An independent copy (new layers, same weights) so optimization never touches ``model``."""
    _, keras = _tf()
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def _weight_layers():
    _, keras = _tf()
    return (keras.layers.Conv2D, keras.layers.Dense)  # DepthwiseConv2D is a Conv2D subclass


def _kernel(layer):
    for name in ("depthwise_kernel", "kernel"):
        w = getattr(layer, name, None)
        if w is not None:
            return w
    return None


def _compile(model, learning_rate: float) -> None:
    _, keras = _tf()
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=["accuracy"],
    )


def _fit_data(train, batch_size: int, seed: int, training: bool = True):
    from train.data.pipeline import make_tf_dataset

    if train is None or len(train) == 0:
        raise DataProblem("fine-tuning needs a non-empty labelled training set")
    if train.y is None:
        raise DataProblem("fine-tuning needs labels; the training set is unlabelled")
    return make_tf_dataset(train, batch_size, training=training, seed=seed)


def layer_sparsity_targets(model, sparsity: float, min_layer_weights: int = 1000, cap: float = 0.98) -> dict[str, float]:
    """Per-layer pruning targets that give ``sparsity`` overall, small kernels kept dense."""
    sizes = {
        layer.name: int(np.prod(_kernel(layer).shape))
        for layer in model.layers
        if isinstance(layer, _weight_layers()) and _kernel(layer) is not None
    }
    total = sum(sizes.values())
    big = {k: v for k, v in sizes.items() if v >= min_layer_weights}
    if not big or sum(big.values()) == total:
        return {k: float(sparsity) for k in sizes}
    per_layer = sparsity * total / sum(big.values())
    if per_layer > cap:
        logger.warning(
            "%.0f%% overall needs %.0f%% in the large kernels; capped at %.0f%% (overall will be lower)",
            sparsity * 100, per_layer * 100, cap * 100,
        )
        per_layer = cap
    return {k: float(per_layer) for k in big}


def _epochs_for(train, batch_size: int, epochs: int, min_steps: int) -> int:
    """``epochs``, raised so that fine-tuning runs at least ``min_steps`` steps."""
    per_epoch = max(1, math.ceil(len(train) / batch_size))
    return max(int(epochs), math.ceil(min_steps / per_epoch))


# --------------------------------------------------------------------------- sparsity


def sparsity_report(model) -> dict:
    """Share of exactly-zero weights per Conv/Dense kernel and overall (biases not counted)."""
    layers = []
    total = zeros = 0
    for layer in _iter_layers(model):
        if not isinstance(layer, _weight_layers()):
            continue
        k = _kernel(layer)
        if k is None:
            continue
        w = np.asarray(k.numpy())
        n, z = int(w.size), int(np.count_nonzero(w == 0))
        layers.append({"layer": layer.name, "weights": n, "zeros": z, "sparsity": round(z / n, 4) if n else 0.0})
        total += n
        zeros += z
    return {"overall": round(zeros / total, 4) if total else 0.0, "weights": total, "zeros": zeros, "layers": layers}


def _iter_layers(model):
    _, keras = _tf()
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _iter_layers(layer)
        else:
            yield layer


# --------------------------------------------------------------------------- pruning


def prune(
    model,
    train,
    *,
    sparsity: float,
    epochs: int = 2,
    batch_size: int = 128,
    learning_rate: float = 5e-4,
    min_steps: int = 400,
    min_layer_weights: int = 1000,
    seed: int = 42,
    verbose: int = 0,
):
    """Magnitude pruning to ``sparsity`` with a polynomial schedule, fine-tuned, then stripped.

    ``sparsity`` is the share of zeros over all Conv/Dense kernels. Kernels with fewer than
    ``min_layer_weights`` weights (LeNet-5's first conv, 150 weights, and its classifier, 840)
    hold almost nothing to save and lose the most accuracy when pruned, so they stay dense and
    the larger kernels are pruned a little harder to reach the same overall share (per-layer
    figures: :func:`sparsity_report`). ``min_layer_weights=0`` prunes every kernel alike.

    Each pruned kernel is wrapped in ``prune_low_magnitude`` with
    ``PolynomialDecay(0 -> target)`` over the first 70 % of the fine-tuning steps; the rest of
    the steps fine-tune at the final sparsity. A small training split is repeated for at least
    ``min_steps`` steps: a few dozen steps do not recover from 80 % pruning. Returns a plain
    tf_keras model with the zeros in place (``strip_pruning``) and its BatchNormalization
    statistics re-estimated (:func:`recalibrate_batchnorm`); measure the zeros with
    :func:`sparsity_report`.
    """
    if not 0 < sparsity < 1:
        raise OptionError(f"sparsity must be between 0 and 1 (exclusive), got {sparsity!r}")
    if epochs < 1:
        raise OptionError(f"epochs must be >= 1, got {epochs!r}")
    _, keras = _tf()
    import tensorflow_model_optimization as tfmot

    sp = tfmot.sparsity.keras
    data = _fit_data(train, batch_size, seed)
    epochs = _epochs_for(train, batch_size, epochs, min_steps)
    steps = math.ceil(len(train) / batch_size) * epochs
    end = max(1, int(steps * 0.7))

    from tensorflow_model_optimization.python.core.sparsity.keras.prune_registry import PruneRegistry

    targets = layer_sparsity_targets(model, sparsity, min_layer_weights)
    schedules = {
        name: sp.PolynomialDecay(
            initial_sparsity=0.0, final_sparsity=s, begin_step=0, end_step=end, frequency=max(1, end // 25)
        )
        for name, s in targets.items()
    }

    def wrap(layer):
        if layer.name in schedules and PruneRegistry.supports(layer):
            return sp.prune_low_magnitude(layer, pruning_schedule=schedules[layer.name])
        return layer

    base = copy_model(model)
    pruned = keras.models.clone_model(base, clone_function=wrap)
    _compile(pruned, learning_rate)
    t0 = time.perf_counter()
    pruned.fit(data, epochs=epochs, callbacks=[sp.UpdatePruningStep()], verbose=verbose)
    stripped = sp.strip_pruning(pruned)
    recalibrate_batchnorm(stripped, train.x, seed=seed)
    logger.info(
        "pruned to %.0f%% in %d steps (%.1f s): real sparsity %.3f",
        sparsity * 100, steps, time.perf_counter() - t0, sparsity_report(stripped)["overall"],
    )
    return stripped


def recalibrate_batchnorm(model, x: np.ndarray, *, batches: int = 50, batch_size: int = 128, seed: int = 42) -> int:
    """Re-estimate BatchNormalization moving statistics on ``x`` (uint8 images), in place.

    Fine-tuning under a changing mask (pruning, clustering) moves the weights faster than the
    moving averages (momentum 0.99) follow: a pruned ResNet then scores far below its training
    accuracy at inference. Forward passes in training mode, momentum 0.9 and dropout off, bring
    the statistics back to the final weights. Returns the number of BN layers updated.
    """
    _, keras = _tf()
    layers = list(_iter_layers(model))
    bns = [layer for layer in layers if isinstance(layer, keras.layers.BatchNormalization)]
    if not bns or x is None or len(x) == 0:
        return 0
    drops = [layer for layer in layers if isinstance(layer, keras.layers.Dropout)]
    saved = [(layer.momentum) for layer in bns], [layer.rate for layer in drops]
    for layer in bns:
        layer.momentum = 0.9
    for layer in drops:
        layer.rate = 0.0
    rng = np.random.default_rng(seed)
    try:
        for _ in range(batches):
            idx = rng.choice(len(x), size=min(batch_size, len(x)), replace=False)
            model(x[idx].astype(np.float32), training=True)
    finally:
        for layer, m in zip(bns, saved[0]):
            layer.momentum = m
        for layer, r in zip(drops, saved[1]):
            layer.rate = r
    logger.info("re-estimated the statistics of %d BatchNormalization layers", len(bns))
    return len(bns)


# --------------------------------------------------------------------------- clustering


def cluster(
    model,
    train,
    *,
    clusters: int,
    epochs: int = 1,
    batch_size: int = 128,
    learning_rate: float = 1e-4,
    preserve_sparsity: bool = True,
    min_steps: int = 150,
    seed: int = 42,
    verbose: int = 0,
):
    """Weight clustering (``cluster_weights``) to ``clusters`` shared values per kernel, fine-tuned,
    stripped. ``preserve_sparsity`` keeps the zeros of a pruned model at zero.

    Layers with fewer weights than ``4 * clusters`` are left alone (nothing to share).
    Centroids start linearly spaced: k-means++ fails on small, mostly-zero kernels.
    """
    if not isinstance(clusters, int) or clusters < 2:
        raise OptionError(f"clusters must be an integer >= 2, got {clusters!r}")
    _, keras = _tf()
    import tensorflow_model_optimization as tfmot

    cl = tfmot.clustering.keras
    data = _fit_data(train, batch_size, seed)
    epochs = _epochs_for(train, batch_size, epochs, min_steps)

    def wrap(layer):
        k = _kernel(layer) if isinstance(layer, _weight_layers()) else None
        if k is not None and int(np.prod(k.shape)) >= 4 * clusters:
            return cl.cluster_weights(
                layer,
                number_of_clusters=clusters,
                cluster_centroids_init=cl.CentroidInitialization.LINEAR,
                preserve_sparsity=preserve_sparsity,
            )
        return layer

    base = copy_model(model)
    clustered = keras.models.clone_model(base, clone_function=wrap)
    _compile(clustered, learning_rate)
    clustered.fit(data, epochs=epochs, verbose=verbose)
    stripped = cl.strip_clustering(clustered)
    recalibrate_batchnorm(stripped, train.x, seed=seed)
    logger.info("clustered weights to %d values per kernel", clusters)
    return stripped


def distinct_weights(model) -> dict[str, int]:
    """Number of distinct values per Conv/Dense kernel (a clustered kernel has <= clusters)."""
    return {
        layer.name: int(np.unique(np.asarray(_kernel(layer).numpy())).size)
        for layer in _iter_layers(model)
        if isinstance(layer, _weight_layers()) and _kernel(layer) is not None
    }


# --------------------------------------------------------------------------- QAT


def _output_quantize_config():
    """QuantizeConfig that fake-quantizes only a layer's output (e.g. the input ``Rescaling``)."""
    import tensorflow_model_optimization as tfmot

    q = tfmot.quantization.keras

    class OutputOnlyQuantizeConfig(q.QuantizeConfig):
        def get_weights_and_quantizers(self, layer):
            return []

        def get_activations_and_quantizers(self, layer):
            return []

        def set_quantize_weights(self, layer, quantize_weights):
            pass

        def set_quantize_activations(self, layer, quantize_activations):
            pass

        def get_output_quantizers(self, layer):
            return [q.quantizers.MovingAverageQuantizer(num_bits=8, per_axis=False, symmetric=False, narrow_range=False)]

        def get_config(self):
            return {}

    return OutputOnlyQuantizeConfig


def quantize_aware(
    model,
    train,
    *,
    epochs: int = 1,
    batch_size: int = 128,
    learning_rate: float = 1e-4,
    preserve_sparsity: bool | None = None,
    preserve_clusters: bool = False,
    min_steps: int = 150,
    seed: int = 42,
    verbose: int = 0,
):
    """Quantization-aware training; returns the QAT model (convert it with ``convert``).

    Uses tfmot's collaborative schemes so earlier optimizations survive: prune-preserving QAT
    when the model has zeros (``preserve_sparsity`` None = detect), cluster-preserving QAT when
    ``preserve_clusters``. Layers the 8-bit registry does not know and that have no weights
    (e.g. ``Rescaling``) get their output fake-quantized only.
    """
    _, keras = _tf()
    import tensorflow_model_optimization as tfmot

    q = tfmot.quantization.keras
    combine = tfmot.experimental.combine
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_registry,
    )

    registry = default_8bit_quantize_registry.Default8BitQuantizeRegistry()
    if preserve_sparsity is None:
        preserve_sparsity = sparsity_report(model)["overall"] > 0.2
    if preserve_clusters:
        scheme = combine.Default8BitClusterPreserveQuantizeScheme(preserve_sparsity=bool(preserve_sparsity))
    elif preserve_sparsity:
        scheme = combine.Default8BitPrunePreserveQuantizeScheme()
    else:
        scheme = q.default_8bit.Default8BitQuantizeScheme()
    OutputOnly = _output_quantize_config()

    def annotate(layer):
        if isinstance(layer, keras.layers.InputLayer):
            return layer
        if registry.supports(layer) or isinstance(layer, keras.layers.BatchNormalization):
            return q.quantize_annotate_layer(layer)
        if layer.weights:
            raise OptionError(
                f"quantization-aware training does not support layer {layer.name!r} ({type(layer).__name__}); "
                "export without --qat (post-training quantization still works)"
            )
        return q.quantize_annotate_layer(layer, quantize_config=OutputOnly())

    base = copy_model(model)
    data = _fit_data(train, batch_size, seed)
    epochs = _epochs_for(train, batch_size, epochs, min_steps)
    with q.quantize_scope({"OutputOnlyQuantizeConfig": OutputOnly}):
        annotated = keras.models.clone_model(base, clone_function=annotate)
        qat = q.quantize_apply(annotated, scheme)
    _compile(qat, learning_rate)
    qat.fit(data, epochs=epochs, verbose=verbose)
    logger.info("quantization-aware training done (%s)", type(scheme).__name__)
    return qat

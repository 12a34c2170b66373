"""Let ``tfmot.sparsity.keras.prune_low_magnitude(model)`` accept our weightless preprocessing layers.

tensorflow-model-optimization means to support ``Rescaling`` (tensorflow/model-optimization
PR #754) but registers ``Rescaling.__class__`` (the metaclass) instead of the class, so a
whole-model ``prune_low_magnitude`` fails on every model of ours (issues #864, #1017).
``Rescaling`` and ``Resizing`` have no weights, so there is nothing to prune: register them
with an empty weight list, exactly as tfmot does for ``Flatten`` or ``MaxPooling2D``.
"""
from __future__ import annotations

import logging

from train._tf import keras

logger = logging.getLogger(__name__)

_WEIGHTLESS = (keras.layers.Rescaling, keras.layers.Resizing)


def register_weightless_layers() -> bool:
    """Add the layers to tfmot's prune registry; False when tfmot is not installed. Idempotent."""
    try:
        from tensorflow_model_optimization.python.core.sparsity.keras import prune_registry
    except ImportError:
        logger.debug("tensorflow-model-optimization not installed; pruning registry left alone")
        return False
    weights_map = prune_registry.PruneRegistry._LAYERS_WEIGHTS_MAP  # noqa: SLF001 (upstream bug workaround)
    for cls in _WEIGHTLESS:
        weights_map.setdefault(cls, [])
    return True

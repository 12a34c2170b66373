"""The one place that imports TensorFlow and Keras 2 for the host side.

``from train._tf import tf, keras`` everywhere in ``train``; never ``import keras``
(that is Keras 3, which tensorflow-model-optimization cannot use).
"""
from __future__ import annotations

import train  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

try:
    import tensorflow as tf
    import tf_keras as keras
except ImportError as e:  # pragma: no cover - depends on the install
    raise ImportError(
        "The host side needs TensorFlow and tf-keras: pip install 'edgeclf[train]'"
    ) from e

__all__ = ["tf", "keras"]

"""Host side: data, models, training, evaluation, optimization and export.

tensorflow-model-optimization only works with Keras 2 (``tf_keras``). TensorFlow 2.16+
defaults to Keras 3, so the switch must be set before TensorFlow is first imported;
importing any ``train`` module does it.
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__all__: list[str] = []

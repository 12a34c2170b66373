"""The one place that imports a TFLite interpreter: ai_edge_litert, tflite_runtime, tf.lite.

TensorFlow is only the last resort (a host with TF but no LiteRT); a device never has it.
"""
from __future__ import annotations

import importlib
import logging
from typing import Any, Callable

from .errors import RuntimeUnavailableError

logger = logging.getLogger(__name__)

_CANDIDATES = (
    ("ai_edge_litert", "ai_edge_litert.interpreter"),
    ("tflite_runtime", "tflite_runtime.interpreter"),
    ("tensorflow", "tensorflow.lite"),  # last resort, host only; never reached on a device
)

_cached: tuple[str, Any, Callable] | None = None


def backend() -> tuple[str, Any, Callable]:
    """``(name, Interpreter class, load_delegate)`` of the first package that imports."""
    global _cached
    if _cached is not None:
        return _cached
    errors = []
    for name, module in _CANDIDATES:
        try:
            mod = importlib.import_module(module)
        except Exception as e:  # tflite_runtime 2.14 + NumPy 2 fails with AttributeError/ImportError
            errors.append(f"{module}: {type(e).__name__}: {e}")
            continue
        if name == "tensorflow":
            interp_cls, load_delegate = mod.Interpreter, mod.experimental.load_delegate
        else:
            interp_cls, load_delegate = mod.Interpreter, mod.load_delegate
        logger.debug("TFLite interpreter from %s", module)
        _cached = (name, interp_cls, load_delegate)
        return _cached
    raise RuntimeUnavailableError(
        "no TFLite interpreter could be imported; install one with "
        "pip install 'edgeclf[device]' (ai-edge-litert). Tried:\n  " + "\n  ".join(errors)
    )

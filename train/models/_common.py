"""Pieces every model shares: the raw-pixel input with its ``Rescaling`` and the softmax head."""
from __future__ import annotations

from numbers import Real

from train._tf import keras

from ._registry import ModelOptionError

layers = keras.layers

#: Scale that turns 0..255 pixels into 0..1; what our own CNNs use.
UNIT_SCALE = 1.0 / 255.0


def pixel_input(input_shape, scale=UNIT_SCALE, offset=0.0):
    """``(inputs, x)``: a float32 raw-pixel input and its ``Rescaling`` (the model's first layer)."""
    inputs = keras.Input(shape=tuple(input_shape), dtype="float32", name="pixels")
    x = layers.Rescaling(scale, offset=offset, name="rescale")(inputs)
    return inputs, x


def softmax_head(x, num_classes, name="logits"):
    """Dense logits and a float32 softmax (float32 even under a mixed-precision policy)."""
    x = layers.Dense(num_classes, name=name)(x)
    return layers.Activation("softmax", dtype="float32", name="probs")(x)


def need_min_size(model_name, input_shape, min_size, why=""):
    """``ValueError`` when the input's height or width is below what the architecture needs."""
    height, width = input_shape[:2]
    if min(height, width) < min_size:
        extra = f" ({why})" if why else ""
        raise ModelOptionError(
            f"{model_name} needs inputs of at least {min_size}x{min_size}, got {height}x{width}{extra}"
        )


def check_number(name, value, low, high=None, low_open=True):
    """``ModelOptionError`` unless ``value`` is a real number above ``low`` (or at it) and below ``high``."""
    ok = isinstance(value, Real) and not isinstance(value, bool)
    if ok:
        ok = (value > low if low_open else value >= low) and (high is None or value < high)
    if not ok:
        bound = f"{'>' if low_open else '>='} {low}" + (f" and < {high}" if high is not None else "")
        raise ModelOptionError(f"{name} must be a number {bound}, got {value!r}")

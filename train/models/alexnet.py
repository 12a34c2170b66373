"""AlexNet (Krizhevsky et al. 2012; seed paper 001), with batch norm, in two sizes.

``scale="full"``: the ImageNet layout for 224x224 inputs (5 convs 96/256/384/384/256 with
11x11/4, 5x5, 3x3 kernels, overlapping 3x3/2 max-pooling, two 4096-unit dense layers).
``scale="small"``: the same 5 conv + 3 dense shape scaled for 28x28 to 64x64 inputs
(3x3 kernels, stride 1, 2x2 pooling, 64/128/192/192/128 filters, 512-unit dense layers).
``scale="auto"`` (default) picks "full" when the shorter side is at least 128 pixels.
"""
from __future__ import annotations

from train._tf import keras

from ._common import need_min_size, pixel_input, softmax_head
from ._registry import ModelOptionError, register_model

layers = keras.layers

AUTO_FULL_MIN_SIZE = 128
_FULL_MIN_SIZE = 67  # the 11x11/4 conv and three 3x3/2 pools leave at least 1x1
_SMALL_MIN_SIZE = 8  # three 2x2 pools leave at least 1x1

#: (filters, kernel, stride, pool after it) per conv layer; pool is (size, stride) or None.
_LAYOUTS = {
    "full": {
        "convs": [(96, 11, 4, (3, 2)), (256, 5, 1, (3, 2)), (384, 3, 1, None), (384, 3, 1, None), (256, 3, 1, (3, 2))],
        "dense": 4096,
    },
    "small": {
        "convs": [(64, 3, 1, (2, 2)), (128, 3, 1, (2, 2)), (192, 3, 1, None), (192, 3, 1, None), (128, 3, 1, (2, 2))],
        "dense": 512,
    },
}


@register_model(
    "alexnet",
    description="AlexNet, 5 conv + 3 dense with BN and dropout; full (224x224) or scaled (28x28/32x32) by input size.",
    default_input_shape=(224, 224, 3),
)
def alexnet(input_shape, num_classes, *, scale: str = "auto", dropout: float = 0.5, width: float = 1.0):
    """AlexNet with BatchNormalization after every conv and ``dropout`` before each dense layer.

    ``scale`` is "auto", "full" or "small"; ``width`` multiplies every filter and unit count.
    """
    if scale not in ("auto", "full", "small"):
        raise ModelOptionError(f"scale must be 'auto', 'full' or 'small', got {scale!r}")
    if width <= 0:
        raise ModelOptionError(f"width must be > 0, got {width!r}")
    if scale == "auto":
        scale = "full" if min(input_shape[:2]) >= AUTO_FULL_MIN_SIZE else "small"
    need_min_size(f"alexnet (scale={scale!r})", input_shape, _FULL_MIN_SIZE if scale == "full" else _SMALL_MIN_SIZE)
    layout = _LAYOUTS[scale]

    def w(n):
        return max(1, round(n * width))

    inputs, x = pixel_input(input_shape)
    pools = 0
    for i, (filters, kernel, stride, pool) in enumerate(layout["convs"], start=1):
        # The full 11x11/4 stem is 'valid' as in the paper; everything else keeps the size.
        padding = "valid" if (scale == "full" and i == 1) else "same"
        x = layers.Conv2D(w(filters), kernel, strides=stride, padding=padding, use_bias=False, name=f"conv{i}")(x)
        x = layers.BatchNormalization(name=f"bn{i}")(x)
        x = layers.ReLU(name=f"relu{i}")(x)
        if pool:
            pools += 1
            x = layers.MaxPooling2D(pool[0], strides=pool[1], name=f"pool{pools}")(x)
    x = layers.Flatten(name="flatten")(x)
    for i in (1, 2):
        if dropout:
            x = layers.Dropout(dropout, name=f"drop{i}")(x)
        x = layers.Dense(w(layout["dense"]), activation="relu", name=f"fc{i}")(x)
    return keras.Model(inputs, softmax_head(x, num_classes), name="alexnet")

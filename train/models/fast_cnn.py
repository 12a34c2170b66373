"""``fast_cnn``: a plain conv net that reaches high accuracy in few epochs, for 32x32 colour and up.

The layout follows the CIFAR-10 speed-run nets (David Page's ResNet-9 and Keller Jordan's
airbench): three blocks, each ``conv -> max-pool 2x2 -> BN -> ReLU -> conv -> BN -> ReLU``, so most
of the arithmetic happens after the first pooling, then global max pooling and a softmax. Only
ops the Edge TPU maps: Conv2D (BN folds into it on export), ReLU, MaxPool2D, the global pooling
and Dense.

Default widths (64, 192, 192) at 32x32x3: 1,167,722 parameters (a full-INT8 file of about 1.2 MB),
about 100 M multiply-adds per image.
"""
from __future__ import annotations

from train._tf import keras

from ._common import check_number, need_min_size, pixel_input, softmax_head
from ._registry import ModelOptionError, register_model

layers = keras.layers


def _conv_bn_relu(x, filters, name, l2, pool=False):
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, kernel_initializer="he_normal",
                      kernel_regularizer=l2, name=f"{name}_conv")(x)
    if pool:
        x = layers.MaxPooling2D(2, name=f"{name}_pool")(x)
    x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


@register_model(
    "fast_cnn",
    description="Plain conv net after the CIFAR-10 speed runs (conv, max-pool, BN, ReLU; 3 blocks): "
                "the most accurate colour model per training hour on a CPU.",
    default_input_shape=(32, 32, 3),
)
def fast_cnn(
    input_shape,
    num_classes,
    *,
    widths: tuple[int, ...] = (64, 192, 192),
    stem_width: int = 32,
    weight_decay: float = 2.5e-4,
    dropout: float = 0.0,
    logit_scale: float = 0.125,
):
    """A 3x3 stem conv, then per entry of ``widths`` a block of two 3x3 convs with a 2x2
    max-pool after the first (each block halves the resolution), global max pooling,
    ``dropout`` and a softmax. ``weight_decay`` is the L2 factor on the conv kernels;
    ``logit_scale`` multiplies the pooled features (so the logits) by a constant, which keeps the
    first steps at a high learning rate stable (ResNet-9 uses 0.125). BN uses momentum 0.9, so
    its moving statistics settle within an epoch.
    """
    widths = tuple(widths)
    if not widths or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in (*widths, stem_width)):
        raise ModelOptionError(f"widths and stem_width must be ints >= 1, got widths={widths}, stem_width={stem_width!r}")
    check_number("weight_decay", weight_decay, 0, low_open=False)
    check_number("dropout", dropout, 0, 1, low_open=False)
    check_number("logit_scale", logit_scale, 0)
    reduction = 2 ** len(widths)
    need_min_size("fast_cnn", input_shape, reduction, f"{len(widths)} blocks of 2x2 pooling")
    l2 = keras.regularizers.L2(weight_decay) if weight_decay else None

    inputs, x = pixel_input(input_shape)
    x = _conv_bn_relu(x, stem_width, "stem", l2)
    for i, width in enumerate(widths, start=1):
        x = _conv_bn_relu(x, width, f"b{i}a", l2, pool=True)
        x = _conv_bn_relu(x, width, f"b{i}b", l2)
    x = layers.GlobalMaxPooling2D(name="gmp")(x)
    if dropout:
        x = layers.Dropout(dropout, name="drop")(x)
    if logit_scale != 1:
        x = layers.Rescaling(logit_scale, name="logit_scale")(x)
    return keras.Model(inputs, softmax_head(x, num_classes), name="fast_cnn")

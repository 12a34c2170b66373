"""``mobilenet_v2``: MobileNetV2 (Sandler et al. 2018) with a width multiplier, for 32x32 up to 224x224.

Inverted residual blocks: a 1x1 expansion conv, a 3x3 depthwise conv (both BatchNorm + ReLU6)
and a linear 1x1 projection (BatchNorm, no activation), with an identity shortcut when the block
keeps its resolution and width. Only Edge TPU ops: Conv2D, DepthwiseConv2D, BatchNormalization
(folded into the convs on export), ReLU6, Add, global average pooling, Dense and softmax; no
hard-swish, no squeeze-excite.

Two layouts of the paper's table (t, c, n, s below), chosen by ``scale``:

- ``"full"``: the paper's strides, a stride-2 stem and four stride-2 stages (total stride 32:
  224 -> 7x7, 96 -> 3x3);
- ``"small"``: the CIFAR variant, the stem and the first 24-channel stage at stride 1 (total
  stride 8: 32 -> 4x4), so a 32x32 image is not reduced to 1x1;
- ``"auto"`` (default): "full" when the shorter side is at least 96 pixels, else "small".

Channel counts are the paper's times ``width``, rounded to multiples of 8 (never below 90 % of
the unrounded figure); the 1280-channel head conv is not narrowed below 1.0, as in the paper.
Parameter counts equal ``keras.applications.MobileNetV2`` (``alpha=width``) plus the classifier:
at the default ``width=0.5`` with 10 classes 719,034 (full-INT8 .tflite: 944,240 bytes bare,
976,496 with the labels an export embeds);
``width=0.75`` (1,394,874, 1.70 MB INT8) no longer fits a 1.5 MB budget. BatchNorm momentum is
0.9 (PyTorch's 0.1) rather than Keras' 0.99, so the moving statistics keep up in short runs and
in export's fine-tuning (pruning, QAT).
"""
from __future__ import annotations

from train._tf import keras

from ._common import check_number, need_min_size, pixel_input, softmax_head
from ._registry import ModelOptionError, register_model, unknown_choice

layers = keras.layers

SCALES = ("auto", "small", "full")
#: Shorter input side from which ``scale="auto"`` picks the paper's strides.
AUTO_FULL_MIN_SIZE = 96
#: (expansion t, output channels c, blocks n, stride s of the first block): the paper's Table 2.
BLOCKS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
_TOTAL_STRIDE = {"full": 32, "small": 8}


def round_channels(value: float, divisor: int = 8) -> int:
    """``value`` rounded to a multiple of ``divisor`` (at least ``divisor``, never below 90 % of it)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def _conv_bn(x, filters, kernel, strides, name, relu6=True, l2=None):
    x = layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False,
                      kernel_regularizer=l2, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(momentum=0.9, epsilon=1e-3, name=f"{name}_bn")(x)
    return layers.ReLU(6.0, name=f"{name}_relu6")(x) if relu6 else x


def _inverted_residual(x, expansion, filters, strides, name, l2):
    """Expand (1x1, ReLU6) -> depthwise 3x3 (ReLU6) -> project (1x1, linear) [+ identity shortcut]."""
    channels = x.shape[-1]
    y = x
    if expansion != 1:
        y = _conv_bn(y, channels * expansion, 1, 1, f"{name}_expand", l2=l2)
    y = layers.DepthwiseConv2D(3, strides=strides, padding="same", use_bias=False, name=f"{name}_dw")(y)
    y = layers.BatchNormalization(momentum=0.9, epsilon=1e-3, name=f"{name}_dw_bn")(y)
    y = layers.ReLU(6.0, name=f"{name}_dw_relu6")(y)
    y = _conv_bn(y, filters, 1, 1, f"{name}_project", relu6=False, l2=l2)
    if strides == 1 and channels == filters:
        y = layers.Add(name=f"{name}_add")([x, y])
    return y


@register_model(
    "mobilenet_v2",
    description="MobileNetV2 (inverted residuals, ReLU6, width multiplier; CIFAR strides below 96x96): "
                "the Edge TPU friendly colour model.",
    default_input_shape=(32, 32, 3),
)
def mobilenet_v2(
    input_shape,
    num_classes,
    *,
    width: float = 0.5,
    scale: str = "auto",
    head_channels: int | None = None,
    dropout: float = 0.2,
    weight_decay: float = 4e-5,
):
    """MobileNetV2: stem conv, 17 inverted residual blocks, 1x1 head conv, GAP, dropout, softmax.

    ``width`` multiplies every channel count (rounded to multiples of 8); ``scale`` is "auto",
    "small" (total stride 8, for 32x32 to 95x95) or "full" (the paper's total stride 32);
    ``head_channels`` overrides the last conv's 1280 (times ``width`` above 1.0);
    ``dropout`` sits before the classifier; ``weight_decay`` is the L2 factor on the kernels of the
    full (not depthwise) convolutions (the paper's 4e-5; depthwise kernels and the classifier are left out).
    """
    if scale not in SCALES:
        raise ModelOptionError(unknown_choice("scale for mobilenet_v2:", str(scale), list(SCALES)))
    check_number("width", width, 0)
    check_number("dropout", dropout, 0, 1, low_open=False)
    check_number("weight_decay", weight_decay, 0, low_open=False)
    if head_channels is not None and (isinstance(head_channels, bool) or not isinstance(head_channels, int)
                                      or head_channels < 1):
        raise ModelOptionError(f"head_channels must be an int >= 1 or None, got {head_channels!r}")
    if scale == "auto":
        scale = "full" if min(input_shape[:2]) >= AUTO_FULL_MIN_SIZE else "small"
    stride = _TOTAL_STRIDE[scale]
    need_min_size(f"mobilenet_v2 (scale={scale!r})", input_shape, stride, f"total stride {stride}")
    l2 = keras.regularizers.L2(weight_decay) if weight_decay else None
    small = scale == "small"

    inputs, x = pixel_input(input_shape)
    x = _conv_bn(x, round_channels(STEM_CHANNELS * width), 3, 1 if small else 2, "stem", l2=l2)
    block = 0
    for stage, (expansion, channels, repeats, first_stride) in enumerate(BLOCKS):
        if small and stage == 1:
            first_stride = 1  # the CIFAR variant keeps 32x32 through the first 24-channel stage
        for i in range(repeats):
            block += 1
            x = _inverted_residual(x, expansion, round_channels(channels * width), first_stride if i == 0 else 1,
                                   f"b{block}", l2)
    if head_channels is None:
        head_channels = round_channels(HEAD_CHANNELS * width) if width > 1.0 else HEAD_CHANNELS
    x = _conv_bn(x, head_channels, 1, 1, "head", l2=l2)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    if dropout:
        x = layers.Dropout(dropout, name="drop")(x)
    return keras.Model(inputs, softmax_head(x, num_classes), name="mobilenet_v2")

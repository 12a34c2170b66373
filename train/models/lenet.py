"""LeNet-5 (seed paper 000), in the modern variant: ReLU and max-pooling, softmax output."""
from __future__ import annotations

from train._tf import keras

from ._common import need_min_size, pixel_input, softmax_head
from ._registry import ModelOptionError, register_model

layers = keras.layers


@register_model(
    "lenet5",
    description="LeNet-5 CNN for 28x28 digits: conv6-pool-conv16-pool-fc120-fc84-softmax (61,706 params at 28x28x1).",
    default_input_shape=(28, 28, 1),
)
def lenet5(
    input_shape,
    num_classes,
    *,
    width: float = 1.0,
    dropout: float = 0.0,
    activation: str = "relu",
    pooling: str = "max",
    batch_norm: bool = False,
):
    """LeNet-5 (LeCun et al. 1998) with ReLU and max-pooling, as seed paper 000 evaluates it.

    ``width`` multiplies every layer's width (6/16 filters, 120/84 units); ``dropout`` adds
    dropout before each fully connected layer; ``activation="tanh"`` and ``pooling="avg"`` give
    the 1998 flavour; ``batch_norm`` puts batch normalization between each convolution or hidden
    dense layer and its activation (it folds into the weights at export).
    """
    if pooling not in ("max", "avg"):
        raise ModelOptionError(f"pooling must be 'max' or 'avg', got {pooling!r}")
    if width <= 0:
        raise ModelOptionError(f"width must be > 0, got {width!r}")
    # conv1 keeps the size ('same'), pool halves it, conv2 (5x5 valid) needs >= 5 pixels left.
    need_min_size("lenet5", input_shape, 10)
    pool = layers.MaxPooling2D if pooling == "max" else layers.AveragePooling2D

    def w(n):
        return max(1, round(n * width))

    def normed(layer, x, name):
        if not batch_norm:
            return layer(x)
        x = layer(x)
        x = layers.BatchNormalization(name=f"{name}_bn")(x)
        return layers.Activation(activation, name=f"{name}_act")(x)

    def conv(n, padding, name):
        return layers.Conv2D(w(n), 5, padding=padding, activation=None if batch_norm else activation,
                             use_bias=not batch_norm, name=name)

    inputs, x = pixel_input(input_shape)
    x = normed(conv(6, "same", "conv1"), x, "conv1")
    x = pool(2, name="pool1")(x)
    x = normed(conv(16, "valid", "conv2"), x, "conv2")
    x = pool(2, name="pool2")(x)
    x = layers.Flatten(name="flatten")(x)
    for i, units in enumerate((120, 84), start=1):
        if dropout:
            x = layers.Dropout(dropout, name=f"drop{i}")(x)
        dense = layers.Dense(w(units), activation=None if batch_norm else activation, use_bias=not batch_norm,
                             name=f"fc{i}")
        x = normed(dense, x, f"fc{i}")
    if dropout:
        x = layers.Dropout(dropout, name="drop3")(x)
    return keras.Model(inputs, softmax_head(x, num_classes), name="lenet5")

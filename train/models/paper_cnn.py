"""The custom CNN of seed paper 001, Table II, layer for layer."""
from __future__ import annotations

from train._tf import keras

from ._common import need_min_size, pixel_input
from ._registry import register_model

layers = keras.layers


@register_model(
    "paper_cnn",
    description="Seed paper 001 Table II CNN: conv32-pool-conv64-pool-flatten-fc128-fc10 (25,710,922 params at 224x224x3).",
    default_input_shape=(224, 224, 3),
)
def paper_cnn(input_shape, num_classes, *, dropout: float = 0.0):
    """Conv2D(32,3x3) -> MaxPool2 -> Conv2D(64,3x3) -> MaxPool2 -> Flatten -> Dense128 -> Dense(classes).

    At 224x224x3 with 10 classes the parameter counts are 896 / 18,496 / 25,690,240 / 1,290
    (the paper prints 25,689,600 for the Dense128 layer; 200,704 * 128 + 128 = 25,690,240).
    ``dropout`` (default off, so Table II is exact) adds dropout before the two dense layers.
    """
    need_min_size("paper_cnn", input_shape, 4)
    inputs, x = pixel_input(input_shape)
    x = layers.Conv2D(32, 3, padding="same", activation="relu", name="conv1")(x)
    x = layers.MaxPooling2D(2, name="pool1")(x)
    x = layers.Conv2D(64, 3, padding="same", activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(2, name="pool2")(x)
    x = layers.Flatten(name="flatten")(x)
    if dropout:
        x = layers.Dropout(dropout, name="drop1")(x)
    x = layers.Dense(128, activation="relu", name="fc1")(x)
    if dropout:
        x = layers.Dropout(dropout, name="drop2")(x)
    # Named fc2 (not "logits") to match the table; the softmax is its own 0-parameter layer.
    x = layers.Dense(num_classes, name="fc2")(x)
    probs = layers.Activation("softmax", dtype="float32", name="probs")(x)
    return keras.Model(inputs, probs, name="paper_cnn")

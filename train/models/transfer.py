"""``transfer``: a ``keras.applications`` backbone (or one of our saved models) plus a new head.

The model still takes raw 0..255 pixels. Its first layer, a ``Rescaling``, applies the
backbone's own ``preprocess_input`` (read off the function itself, so every backbone is
right without a table): [-1, 1] for MobileNetV2, per-channel mean/std for DenseNet, mean
subtraction for VGG/ResNet ("caffe" mode, whose BGR order is handled by permuting the first
conv kernel's input channels once), identity for backbones that normalise inside themselves
(EfficientNet, MobileNetV3, ConvNeXt, RegNet). Grey inputs become three channels and small
inputs are resized, inside the model, with built-in layers only.

The backbone is one nested layer named ``"backbone"`` (:data:`BACKBONE_LAYER`);
:func:`set_transfer_stage` freezes it for the head stage and unfreezes its top layers
(BatchNormalization stays frozen) for fine-tuning.
"""
from __future__ import annotations

import functools
import importlib
import logging
import os
import urllib.error
from pathlib import Path

import numpy as np

from train._tf import keras

from ._registry import ModelOptionError, register_model, unknown_choice

logger = logging.getLogger(__name__)
layers = keras.layers

BACKBONE_LAYER = "backbone"
STAGES = ("head", "fine_tune")
DEFAULT_BACKBONE = "MobileNetV2"
#: Smallest input side keras.applications accepts, where it is not 32.
_MIN_SIZE = {"InceptionV3": 75, "InceptionResNetV2": 75, "Xception": 71}
#: With pretrained weights, small inputs are resized at least this far: ImageNet features
#: are poor at 32x32, and 96 is the smallest size MobileNet weights are published for.
PRETRAINED_MIN_SIZE = 96


class WeightsUnavailableError(ValueError):
    """Pretrained weights are neither in the Keras cache nor downloadable (offline).

    A ``ValueError`` so that a CLI reporting bad input prints it as the user's choice to change.
    """


@functools.lru_cache(maxsize=None)
def list_backbones() -> list[str]:
    """Names of the ``keras.applications`` models usable as backbones."""
    names = []
    for name in dir(keras.applications):
        fn = getattr(keras.applications, name)
        if name[:1].isupper() and callable(fn) and hasattr(importlib.import_module(fn.__module__), "preprocess_input"):
            names.append(name)
    return sorted(names)


def _application(name: str):
    if name not in list_backbones():
        raise ModelOptionError(unknown_choice("backbone", str(name), list_backbones()))
    return getattr(keras.applications, name)


def _preprocessing(app) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(scale, offset, perm)``: ``preprocess_input(x)[..., c] == scale[c] * x[..., perm[c]] + offset[c]``.

    Found by probing the backbone's own ``preprocess_input`` with black and pure-channel pixels.
    """
    preprocess = importlib.import_module(app.__module__).preprocess_input

    def probe(rgb):
        return np.asarray(preprocess(np.array(rgb, dtype="float32").reshape(1, 1, 1, 3)), dtype="float64").reshape(3)

    offset = probe([0.0, 0.0, 0.0])
    matrix = np.stack([(probe(np.eye(3)[j] * 255.0) - offset) / 255.0 for j in range(3)], axis=1)
    perm = np.abs(matrix).argmax(axis=1)
    scale = matrix[np.arange(3), perm]
    expected = np.zeros((3, 3))
    expected[np.arange(3), perm] = scale
    if sorted(perm) != [0, 1, 2] or not np.allclose(matrix, expected, atol=1e-6) or np.any(scale == 0):
        raise ModelOptionError(f"{app.__name__}: preprocess_input is not a per-channel affine map; cannot express it as Rescaling")
    return scale, offset, perm


def _cache_dir() -> str:
    return os.path.join(os.path.expanduser("~"), ".keras", "models")


def _build_application(name: str, shape, weights, backbone_kwargs):
    app = _application(name)
    if weights not in (None, "imagenet") and not Path(weights).is_file():
        raise FileNotFoundError(f"weights file not found: {weights} (pass weights=None, 'imagenet' or an .h5 path)")
    try:
        model = app(include_top=False, weights=weights, input_shape=tuple(shape), **backbone_kwargs)
    except Exception as e:  # Keras raises a bare Exception("URL fetch failure ...") when offline
        offline = isinstance(e, (OSError, urllib.error.URLError)) or "URL fetch failure" in str(e)
        if weights == "imagenet" and offline:
            raise WeightsUnavailableError(
                f"ImageNet weights for {name} are not in the Keras cache ({_cache_dir()}) and could not "
                f"be downloaded ({e}). Offline? Pass weights=None to start from random weights, "
                "weights='/path/to/weights.h5' for a local weights file, or "
                "backbone_model='/path/to/model.keras' (or a run directory) to start from one of our trained models."
            ) from e
        raise
    return model


def _permute_first_conv(backbone, perm) -> None:
    """Make a BGR-trained backbone accept RGB by reordering its first kernel's input channels."""
    inverse = np.argsort(perm)
    for layer in backbone.layers:
        kernel = getattr(layer, "kernel", None)
        if kernel is not None and kernel.shape.rank == 4 and kernel.shape[-2] == 3:
            weights = layer.get_weights()
            weights[0] = weights[0][:, :, inverse, :]
            layer.set_weights(weights)
            logger.debug("permuted input channels of %s by %s", layer.name, inverse.tolist())
            return
    raise ModelOptionError(f"{backbone.name}: no 3-channel first convolution to reorder to RGB")


def _resolve_saved_model(path) -> Path:
    path = Path(path)
    if path.is_dir():
        candidates = [path / "model.keras"] if (path / "model.keras").is_file() else sorted(path.glob("*.keras"))
        if len(candidates) != 1:
            raise FileNotFoundError(f"{path}: expected model.keras or exactly one *.keras file, found {len(candidates)}")
        path = candidates[0]
    if not path.is_file():
        raise FileNotFoundError(f"backbone_model not found: {path}")
    return path


def _feature_tensor(model):
    """The penultimate representation of one of our classifiers.

    The output of its last global pooling layer if it has one, otherwise the input of its
    last Dense layer (the classifier), looking through Dropout.
    """
    pools = [lay for lay in model.layers if isinstance(lay, (layers.GlobalAveragePooling2D, layers.GlobalMaxPooling2D))]
    if pools:
        return pools[-1].output
    dense = [lay for lay in model.layers if isinstance(lay, layers.Dense)]
    if not dense:
        raise ModelOptionError(f"{model.name}: no global pooling or Dense layer to cut the backbone at")
    tensor = dense[-1].input
    while isinstance(tensor._keras_history.layer, layers.Dropout):
        tensor = tensor._keras_history.layer.input
    return tensor


def _resize_target(shape, size):
    """(height, width) the backbone should see for an input of ``shape``, or None to keep it."""
    height, width = shape[:2]
    if min(height, width) >= size:
        return None
    return (round(height * size / min(height, width)), round(width * size / min(height, width)))


@register_model(
    "transfer",
    description="Transfer learning: any keras.applications backbone (MobileNetV2 default) or a saved model of ours, "
                "plus GAP-dropout-softmax head.",
    default_input_shape=(224, 224, 3),
)
def transfer(
    input_shape,
    num_classes,
    *,
    backbone: str | None = None,
    weights: str | None = "imagenet",
    backbone_model: str | None = None,
    backbone_input_size: int | None = None,
    backbone_kwargs: dict | None = None,
    dropout: float = 0.2,
):
    """A pretrained backbone with a new classifier head.

    ``backbone``: a ``keras.applications`` name (default MobileNetV2; see :func:`list_backbones`).
    ``weights``: "imagenet" (Keras cache, download when online), None (random) or an .h5 path.
    ``backbone_model``: instead of the above, a saved ``.keras`` model of ours (or a run
    directory holding ``model.keras``); its layers up to the global pooling / penultimate layer
    become the backbone. ``backbone_input_size``: side the backbone sees; by default inputs
    smaller than the backbone's minimum (32, or 96 with pretrained weights) are resized up.
    ``backbone_kwargs``: extra arguments for the application (e.g. ``{"alpha": 0.35}``).
    """
    height, width, channels = input_shape
    if channels not in (1, 3):
        raise ModelOptionError(f"transfer needs 1 (grey) or 3 (RGB) input channels, got {channels}")
    if backbone_model is not None:
        if backbone is not None or backbone_kwargs or weights not in (None, "imagenet"):
            raise ModelOptionError("backbone_model= replaces backbone=, weights= and backbone_kwargs=; pass only one source")
        return _from_saved_model(input_shape, num_classes, backbone_model, backbone_input_size, dropout)

    name = backbone or DEFAULT_BACKBONE
    app = _application(name)
    min_size = _MIN_SIZE.get(name, 32)
    if backbone_input_size is None:
        size = min_size if weights is None else max(min_size, PRETRAINED_MIN_SIZE)
        target = _resize_target(input_shape, size)
    else:
        if backbone_input_size < min_size:
            raise ModelOptionError(f"{name} needs backbone_input_size >= {min_size}, got {backbone_input_size}")
        target = None if (height, width) == (backbone_input_size,) * 2 else (backbone_input_size,) * 2
    scale, offset, perm = _preprocessing(app)
    base = _build_application(name, (*(target or (height, width)), 3), weights, dict(backbone_kwargs or {}))
    if weights is not None and list(perm) != [0, 1, 2]:
        _permute_first_conv(base, perm)
    inverse = np.argsort(perm)
    scale, offset = scale[inverse], offset[inverse]  # indexed by our RGB input channel
    base_net = keras.Model(base.inputs, base.outputs, name=BACKBONE_LAYER)

    inputs = keras.Input(shape=tuple(input_shape), dtype="float32", name="pixels")
    same = np.allclose(scale, scale[0]) and np.allclose(offset, offset[0])
    # Per-channel constants broadcast a grey channel to three; equal ones keep one channel
    # and the Concatenate below replicates it (Edge-TPU friendly).
    x = layers.Rescaling(
        float(scale[0]) if same else scale.tolist(),
        offset=float(offset[0]) if same else offset.tolist(),
        name="rescale",
    )(inputs)
    if target:
        x = layers.Resizing(*target, interpolation="bilinear", name="resize")(x)
    if x.shape[-1] == 1:
        x = layers.Concatenate(name="grey_to_rgb")([x, x, x])
    # Pretrained: keep BatchNorm in inference mode even when the backbone is unfrozen.
    x = base_net(x, training=False) if weights is not None else base_net(x)
    return keras.Model(inputs, _head(x, num_classes, dropout), name=f"transfer_{name.lower()}")


def _head(x, num_classes, dropout):
    if x.shape.rank == 4:
        x = layers.GlobalAveragePooling2D(name="gap")(x)
    if dropout:
        x = layers.Dropout(dropout, name="head_drop")(x)
    x = layers.Dense(num_classes, name="logits")(x)
    return layers.Activation("softmax", dtype="float32", name="probs")(x)


def _from_saved_model(input_shape, num_classes, path, backbone_input_size, dropout):
    path = _resolve_saved_model(path)
    saved = keras.models.load_model(path, compile=False)
    features = _feature_tensor(saved)
    base_net = keras.Model(saved.inputs, features, name=BACKBONE_LAYER)
    bh, bw, bc = saved.input_shape[1:]
    channels = input_shape[2]
    if bc != channels and not (bc == 3 and channels == 1):
        raise ModelOptionError(f"{path.name} takes {bc}-channel input; cannot feed it {channels}-channel images")
    if backbone_input_size is not None and (backbone_input_size, backbone_input_size) != (bh, bw):
        raise ModelOptionError(f"{path.name} has a fixed {bh}x{bw} input; backbone_input_size={backbone_input_size} cannot apply")

    inputs = keras.Input(shape=tuple(input_shape), dtype="float32", name="pixels")
    # The saved model normalises its own raw-pixel input, so this Rescaling is the identity.
    x = layers.Rescaling(1.0, name="rescale")(inputs)
    if tuple(input_shape[:2]) != (bh, bw):
        x = layers.Resizing(bh, bw, interpolation="bilinear", name="resize")(x)
    if channels == 1 and bc == 3:
        x = layers.Concatenate(name="grey_to_rgb")([x, x, x])
    x = base_net(x, training=False)
    return keras.Model(inputs, _head(x, num_classes, dropout), name=f"transfer_{saved.name}")


def get_backbone(model):
    """The nested backbone of a transfer model (the layer named :data:`BACKBONE_LAYER`)."""
    try:
        return model.get_layer(BACKBONE_LAYER)
    except ValueError as e:
        raise ModelOptionError(f"{model.name} has no layer named {BACKBONE_LAYER!r}; is it a transfer model?") from e


def set_transfer_stage(model, stage: str, fine_tune_layers: int | None = 20):
    """Freeze the backbone (``"head"``) or unfreeze its top ``fine_tune_layers`` (``"fine_tune"``).

    ``fine_tune_layers=None`` unfreezes the whole backbone. BatchNormalization layers stay
    frozen (so they run in inference mode), as Keras recommends for fine-tuning. Recompile
    the model afterwards. Returns the model.
    """
    if stage not in STAGES:
        raise ModelOptionError(unknown_choice("stage", str(stage), list(STAGES)))
    base = get_backbone(model)
    if stage == "head":
        base.trainable = False
    else:
        if fine_tune_layers is not None and fine_tune_layers < 0:
            raise ModelOptionError(f"fine_tune_layers must be >= 0 or None, got {fine_tune_layers}")
        base.trainable = True
        body = [lay for lay in base.layers if not isinstance(lay, layers.InputLayer)]
        first = 0 if fine_tune_layers is None else max(0, len(body) - fine_tune_layers)
        for i, layer in enumerate(body):
            layer.trainable = i >= first and not isinstance(layer, layers.BatchNormalization)
    logger.info(
        "transfer stage %s: %d trainable / %d total weights",
        stage, len(model.trainable_weights), len(model.weights),
    )
    return model

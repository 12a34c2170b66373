"""Model registry: ``create_model("lenet5", (28, 28, 1), 10)``, ``list_models("res*")``.

Every model takes raw pixels (float32 0..255, NHWC), normalises them in its first layer (a
``keras.layers.Rescaling``) and outputs float32 softmax probabilities. Models use built-in
tf_keras layers only, so they save/load as ``.keras`` without custom objects, convert to
full-INT8 TFLite and can be wrapped by ``tfmot.sparsity.keras.prune_low_magnitude``.

Registered: ``lenet5``, ``paper_cnn``, ``resnet_small``, ``alexnet``, ``mobilenet_v2``, ``fast_cnn``, ``transfer``.
"""
from ._registry import ModelOptionError, ModelSpec, create_model, get_spec, list_models, model_info, register_model
from ._tfmot import register_weightless_layers

# Importing a family module registers its models; listed explicitly, no plugin discovery.
from . import alexnet, fast_cnn, lenet, mobilenet, paper_cnn, resnet, transfer  # noqa: E402,F401  isort: skip
from .transfer import (  # noqa: E402
    BACKBONE_LAYER,
    STAGES,
    WeightsUnavailableError,
    get_backbone,
    list_backbones,
    set_transfer_stage,
)

register_weightless_layers()

__all__ = [
    "BACKBONE_LAYER",
    "STAGES",
    "ModelOptionError",
    "ModelSpec",
    "WeightsUnavailableError",
    "create_model",
    "get_backbone",
    "get_spec",
    "list_backbones",
    "list_models",
    "model_info",
    "register_model",
    "register_weightless_layers",
    "set_transfer_stage",
]

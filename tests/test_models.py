"""The model registry and the contract every model keeps: raw 0..255 pixels in, float32
softmax out, a Rescaling first, built-in layers only (save/load, full-INT8 TFLite, pruning)."""
from __future__ import annotations

import re
import urllib.error

import numpy as np
import pytest

from train import models
from train._tf import keras, tf
from train.models import _registry

# Small backbone so the transfer tests stay fast; weights=None never downloads.
TRANSFER_KW = {"weights": None, "backbone_kwargs": {"alpha": 0.35}}
SHAPES = [(28, 28, 1), (32, 32, 3)]
# Names Keras makes up for unnamed layers, e.g. "conv2d_3", "re_lu", "batch_normalization_1".
# ("flatten" is also the name we give our one Flatten, so only its numbered forms count.)
AUTO_NAME = re.compile(
    r"^(conv2d|dense|dropout|max_pooling2d|average_pooling2d|batch_normalization|re_lu|activation|add|"
    r"concatenate|rescaling|resizing|global_average_pooling2d|input)(_\d+)?$|^(flatten|model|functional)_\d+$"
)


def _kw(name):
    return dict(TRANSFER_KW) if name == "transfer" else {}


def _pixels(shape, n=4, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, *shape)).astype("float32")


# ---------------------------------------------------------------- registry


def test_registry_lists_all_families():
    assert models.list_models() == ["alexnet", "fast_cnn", "lenet5", "mobilenet_v2", "paper_cnn", "resnet_small", "transfer"]
    assert models.list_models("res*") == ["resnet_small"]
    info = models.model_info("lenet5")
    assert info["default_input_shape"] == (28, 28, 1)
    assert {"width", "dropout"} <= set(info["kwargs"])
    assert info["description"]


def test_unknown_model_suggests_close_match():
    with pytest.raises(ValueError, match=r"Did you mean 'lenet5'.*Valid: alexnet, fast_cnn, lenet5"):
        models.create_model("lenet", (28, 28, 1), 10)


def test_unknown_option_and_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="Did you mean 'dropout'"):
        models.create_model("lenet5", (28, 28, 1), 10, droput=0.2)
    with pytest.raises(ValueError, match="input_shape"):
        models.create_model("lenet5", (28, 28), 10)
    with pytest.raises(ValueError, match="num_classes"):
        models.create_model("lenet5", (28, 28, 1), 1)
    with pytest.raises(ValueError, match="at least 10x10"):
        models.create_model("lenet5", (8, 8, 1), 10)


def test_duplicate_registration_is_an_error():
    @models.register_model("_test_tiny", description="test only")
    def tiny(input_shape, num_classes, *, units: int = 4):
        raise NotImplementedError

    try:
        assert models.model_info("_test_tiny")["kwargs"] == {"units": 4}
        with pytest.raises(ValueError, match="already registered"):
            models.register_model("_test_tiny")(tiny)
        with pytest.raises(ValueError, match="already registered"):
            models.register_model("lenet5")(tiny)
    finally:
        _registry._REGISTRY.pop("_test_tiny", None)


# ---------------------------------------------------------------- paper_cnn == Table II


def test_paper_cnn_matches_table_ii():
    model = models.create_model("paper_cnn", (224, 224, 3), 10)
    params = {layer.name: layer.count_params() for layer in model.layers}
    assert params["conv1"] == 896
    assert params["conv2"] == 18_496
    assert params["fc1"] == 25_690_240  # the paper's 25,689,600 is a misprint
    assert params["fc2"] == 1_290
    assert model.get_layer("flatten").output_shape == (None, 200_704)
    assert model.count_params() == 896 + 18_496 + 25_690_240 + 1_290 == 25_710_922


# ---------------------------------------------------------------- the model contract


@pytest.fixture(scope="module")
def built():
    """Every registered model at 28x28x1 and 32x32x3, built once for the module."""
    return {
        (name, shape): models.create_model(name, shape, 10, **_kw(name))
        for name in models.list_models()
        for shape in SHAPES
    }


@pytest.mark.parametrize("shape", SHAPES, ids=["28x28x1", "32x32x3"])
@pytest.mark.parametrize("name", ["lenet5", "paper_cnn", "resnet_small", "alexnet", "mobilenet_v2", "fast_cnn", "transfer"])
def test_model_contract(built, name, shape):
    model = built[(name, shape)]
    assert model.input_shape == (None, *shape)
    assert model.input.dtype == tf.float32
    assert isinstance(model.layers[1], keras.layers.Rescaling)  # first layer after the input
    assert model.output_shape == (None, 10)
    unnamed = [layer.name for layer in model.layers if AUTO_NAME.match(layer.name)]
    assert not unnamed, f"layers without a readable name: {unnamed}"
    probs = model(_pixels(shape), training=False).numpy()
    assert probs.dtype == np.float32
    assert np.all(probs >= 0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_lenet5_is_the_classic_layout(built):
    model = built[("lenet5", (28, 28, 1))]
    assert model.count_params() == 61_706
    assert [model.get_layer(n).output_shape[1:] for n in ("conv1", "pool2", "fc1", "fc2")] == [
        (28, 28, 6), (5, 5, 16), (120,), (84,),
    ]


def test_lenet5_batch_norm_keeps_the_layout():
    model = models.create_model("lenet5", (28, 28, 1), 10, batch_norm=True)
    # the biases move into the batch norms: 226 biases out, 4 x 226 batch-norm parameters in
    assert model.count_params() == 61_706 - 226 + 4 * 226
    assert [model.get_layer(n).output_shape[1:] for n in ("conv1_act", "pool2", "fc1_act", "fc2_act")] == [
        (28, 28, 6), (5, 5, 16), (120,), (84,),
    ]
    assert sum(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers) == 4
    assert not model.get_layer("conv1").use_bias and model.get_layer("conv1").activation is keras.activations.linear


def test_alexnet_picks_its_size_from_the_input():
    small = models.create_model("alexnet", (32, 32, 3), 10)
    assert small.get_layer("conv1").kernel_size == (3, 3)
    full = models.create_model("alexnet", (224, 224, 3), 1000)
    assert full.get_layer("conv1").kernel_size == (11, 11)
    assert full.get_layer("conv1").strides == (4, 4)
    assert full.get_layer("fc1").units == 4096
    with pytest.raises(ValueError, match="at least 67x67"):
        models.create_model("alexnet", (32, 32, 3), 10, scale="full")


def test_softmax_stays_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = models.create_model("resnet_small", (28, 28, 1), 10)
        assert model.get_layer("logits").compute_dtype == "float16"
        assert model.output.dtype == tf.float32
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("name", ["lenet5", "paper_cnn", "resnet_small", "alexnet", "mobilenet_v2", "fast_cnn", "transfer"])
def test_save_load_round_trip(built, name, tmp_path):
    model = built[(name, (28, 28, 1))]
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.models.load_model(path)  # no custom_objects
    x = _pixels((28, 28, 1))
    np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))


# ---------------------------------------------------------------- deployment paths


def _int8_tflite(model, shape):
    rng = np.random.default_rng(1)

    def representative():
        for _ in range(16):
            yield [rng.integers(0, 256, (1, *shape)).astype("float32")]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8
    converter.inference_output_type = tf.uint8
    return converter.convert()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lenet5", "resnet_small"])
def test_full_int8_tflite_runs_in_litert(built, name):
    from ai_edge_litert.interpreter import Interpreter

    shape = (28, 28, 1)
    interpreter = Interpreter(model_content=_int8_tflite(built[(name, shape)], shape))
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    assert inp["dtype"] == np.uint8 and out["dtype"] == np.uint8
    float_ops = [
        t["name"] for t in interpreter.get_tensor_details()
        if t["dtype"] == np.float32 and t["index"] not in (inp["index"], out["index"])
    ]
    assert not float_ops, f"float tensors left in a full-INT8 model: {float_ops[:5]}"
    scale, zero = inp["quantization"]
    x = _pixels(shape, n=1)
    interpreter.set_tensor(inp["index"], np.clip(np.round(x / scale + zero), 0, 255).astype(np.uint8))
    interpreter.invoke()
    scale, zero = out["quantization"]
    probs = (interpreter.get_tensor(out["index"]).astype(np.int64) - zero) * scale
    assert probs.shape == (1, 10)
    assert abs(probs.sum() - 1.0) < 0.05


@pytest.mark.parametrize("name", ["lenet5", "resnet_small", "mobilenet_v2", "fast_cnn"])
def test_prune_low_magnitude_wraps_the_whole_model(built, name):
    import tensorflow_model_optimization as tfmot

    pruned = tfmot.sparsity.keras.prune_low_magnitude(built[(name, (28, 28, 1))])
    wrapped = [layer.layer for layer in pruned.layers if type(layer).__name__ == "PruneLowMagnitude"]
    assert any(isinstance(layer, keras.layers.Conv2D) for layer in wrapped)
    assert any(isinstance(layer, keras.layers.Dense) for layer in wrapped)
    assert pruned.output_shape == (None, 10)


# ---------------------------------------------------------------- transfer


def _trainable(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def test_transfer_builds_grey_small_input_and_switches_stages():
    model = models.create_model("transfer", (28, 28, 1), 5, **TRANSFER_KW)
    assert [layer.name for layer in model.layers[:5]] == ["pixels", "rescale", "resize", "grey_to_rgb", "backbone"]
    assert model.get_layer("resize").output_shape == (None, 32, 32, 1)
    rescale = model.get_layer("rescale").get_config()
    assert rescale["scale"] == pytest.approx(1 / 127.5) and rescale["offset"] == pytest.approx(-1.0)  # MobileNetV2
    backbone = models.get_backbone(model)
    everything = _trainable(model)

    models.set_transfer_stage(model, "head")
    head = _trainable(model)
    assert head == 5 * model.get_layer("logits").input_shape[-1] + 5
    assert not backbone.trainable

    models.set_transfer_stage(model, "fine_tune", fine_tune_layers=20)
    top = _trainable(model)
    assert head < top < everything
    top_layers = [layer for layer in backbone.layers if not isinstance(layer, keras.layers.InputLayer)][-20:]
    assert any(layer.trainable_weights for layer in top_layers)
    bn = [layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert bn and not any(layer.trainable for layer in bn)

    with pytest.raises(ValueError, match="Did you mean 'fine_tune'"):
        models.set_transfer_stage(model, "finetune")


def test_transfer_refuses_unknown_backbone():
    with pytest.raises(ValueError, match="Did you mean 'MobileNetV2'"):
        models.create_model("transfer", (32, 32, 3), 10, backbone="MobilenetV2", weights=None)
    assert "EfficientNetB0" in models.list_backbones()


def test_transfer_imagenet_offline_gives_clear_error(monkeypatch, tmp_path):
    from tf_keras.src.utils import data_utils

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setenv("HOME", str(tmp_path))  # an empty Keras cache (~/.keras)
    monkeypatch.setattr(data_utils, "urlretrieve", offline)
    with pytest.raises(models.WeightsUnavailableError) as err:
        models.create_model("transfer", (96, 96, 3), 10, weights="imagenet", backbone_kwargs={"alpha": 0.35})
    message = str(err.value)
    assert "weights=None" in message and ".h5" in message and "backbone_model=" in message
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        models.create_model("transfer", (96, 96, 3), 10, weights=str(tmp_path / "missing.h5"))


def test_transfer_from_our_saved_lenet5(built, tmp_path):
    lenet = built[("lenet5", (28, 28, 1))]
    lenet.save(tmp_path / "model.keras")
    model = models.create_model("transfer", (28, 28, 1), 3, backbone_model=str(tmp_path))  # a run dir
    backbone = models.get_backbone(model)
    assert backbone.output_shape == (None, 84)  # cut at fc2, the penultimate layer
    assert model.get_layer("rescale").get_config()["scale"] == 1.0  # lenet5 rescales inside
    np.testing.assert_array_equal(backbone.get_layer("conv1").get_weights()[0], lenet.get_layer("conv1").get_weights()[0])
    probs = model(_pixels((28, 28, 1)), training=False).numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    models.set_transfer_stage(model, "head")
    assert _trainable(model) == 84 * 3 + 3
    # RGB 32x32 images into the grey 28x28 backbone are refused; grey 32x32 is resized.
    with pytest.raises(ValueError, match="1-channel input"):
        models.create_model("transfer", (28, 28, 3), 3, backbone_model=str(tmp_path / "model.keras"))
    resized = models.create_model("transfer", (32, 32, 1), 3, backbone_model=str(tmp_path / "model.keras"))
    assert resized.get_layer("resize").output_shape == (None, 28, 28, 1)


# ---------------------------------------------------------------- mobilenet_v2 (issue 12)

#: What an edge model for colour photos must fit: a full-INT8 .tflite of at most 1.5 MB.
INT8_BUDGET_BYTES = 1_500_000


def test_mobilenet_v2_picks_its_strides_from_the_input(built):
    small = built[("mobilenet_v2", (32, 32, 3))]
    assert small.get_layer("stem_conv").strides == (1, 1)  # the CIFAR variant: total stride 8
    assert small.get_layer("b2_dw").strides == (1, 1)  # first 24-channel block keeps 32x32
    assert small.get_layer("head_relu6").output_shape == (None, 4, 4, 1280)
    full = models.create_model("mobilenet_v2", (96, 96, 3), 10)
    assert full.get_layer("stem_conv").strides == (2, 2)  # the paper's strides: total stride 32
    assert full.get_layer("head_relu6").output_shape == (None, 3, 3, 1280)
    probs = full(_pixels((96, 96, 3), n=2), training=False).numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    forced = models.create_model("mobilenet_v2", (96, 96, 3), 10, scale="small")
    assert forced.get_layer("head_relu6").output_shape == (None, 12, 12, 1280)


def test_mobilenet_v2_is_the_paper_layout(built):
    model = built[("mobilenet_v2", (32, 32, 3))]  # width 0.5
    # the same weights as keras.applications.MobileNetV2(alpha=0.5, include_top=False) + a 10-way classifier
    assert model.count_params() == 706_224 + 1280 * 10 + 10 == 719_034
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)
             and not isinstance(layer, keras.layers.DepthwiseConv2D)]
    assert all(layer.filters % 8 == 0 for layer in convs)
    assert [model.get_layer(f"b{i}_project_conv").filters for i in (1, 2, 4, 7, 11, 14, 17)] == [8, 16, 16, 32, 48, 80, 160]
    # inverted residual: expand 6x, depthwise 3x3, linear projection, identity shortcut at stride 1
    assert model.get_layer("b3_expand_conv").filters == 6 * 16
    assert model.get_layer("b3_dw").kernel_size == (3, 3)
    names = {layer.name for layer in model.layers}
    assert "b3_add" in names and "b2_add" not in names  # b2 changes the width: no shortcut
    assert sum(isinstance(layer, keras.layers.Add) for layer in model.layers) == 10
    assert "b1_expand_conv" not in names  # t = 1: no expansion
    relus = [layer for layer in model.layers if isinstance(layer, keras.layers.ReLU)]
    assert relus and all(float(layer.max_value) == 6.0 for layer in relus)
    # the projection is linear: its batch norm feeds the shortcut Add or the next block directly
    assert not any(layer.name.startswith("b3_project") and isinstance(layer, keras.layers.ReLU) for layer in model.layers)
    assert not [layer.name for layer in model.layers if isinstance(layer, keras.layers.Activation)
                and layer.name != "probs"]
    wide = models.create_model("mobilenet_v2", (32, 32, 3), 10, width=1.0)
    assert wide.count_params() == 2_257_984 + 1280 * 10 + 10


@pytest.fixture(scope="module", params=["mobilenet_v2", "fast_cnn"])
def edge_int8(request, built):
    """``(name, bytes)``: each colour edge model at 32x32x3, full-INT8 through the project's
    conversion (random calibration)."""
    from train.export.conversion import convert

    calibration = np.random.default_rng(3).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    return request.param, convert(built[(request.param, (32, 32, 3))], "full_int8", representative=calibration)


@pytest.mark.slow
def test_colour_edge_models_int8_fit_the_budget_and_run(edge_int8):
    from ai_edge_litert.interpreter import Interpreter

    name, tflite = edge_int8
    assert len(tflite) <= INT8_BUDGET_BYTES, f"{name}: INT8 model is {len(tflite):,} bytes"
    interpreter = Interpreter(model_content=tflite)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    assert inp["dtype"] == np.uint8 and tuple(inp["shape"]) == (1, 32, 32, 3)
    interpreter.set_tensor(inp["index"], _pixels((32, 32, 3), n=1).astype(np.uint8))
    interpreter.invoke()
    scale, zero = out["quantization"]
    probs = (interpreter.get_tensor(out["index"]).astype(np.int64) - zero) * scale
    assert probs.shape == (1, 10) and abs(probs.sum() - 1.0) < 0.05


@pytest.mark.slow
def test_colour_edge_models_int8_map_every_op_to_the_edge_tpu(edge_int8):
    from train.export.preflight import preflight

    name, tflite = edge_int8
    report = preflight(tflite)
    assert report.fully_mapped, report.summary()
    ops = {o.op for o in report.ops}
    assert {"CONV_2D", "FULLY_CONNECTED", "SOFTMAX"} <= ops
    assert {"mobilenet_v2": {"DEPTHWISE_CONV_2D", "ADD"}, "fast_cnn": {"MAX_POOL_2D"}}[name] <= ops
    assert "HARD_SWISH" not in ops


def test_mobilenet_v2_refuses_options_that_cannot_work():
    def build(shape=(32, 32, 3), **kw):
        return models.create_model("mobilenet_v2", shape, 10, **kw)

    with pytest.raises(models.ModelOptionError, match=r"Did you mean 'small'.*Valid: auto, small, full"):
        build(scale="smal")
    for width in (0, -0.5, "wide", True):
        with pytest.raises(models.ModelOptionError, match="width must be a number > 0"):
            build(width=width)
    with pytest.raises(models.ModelOptionError, match=r"dropout must be a number >= 0 and < 1"):
        build(dropout=1.0)
    with pytest.raises(models.ModelOptionError, match="weight_decay"):
        build(weight_decay=-1e-4)
    with pytest.raises(models.ModelOptionError, match="head_channels"):
        build(head_channels=0)
    with pytest.raises(models.ModelOptionError, match=r"scale='full'.*at least 32x32.*total stride 32"):
        build((28, 28, 3), scale="full")
    with pytest.raises(models.ModelOptionError, match=r"at least 8x8"):
        build((6, 6, 3))
    with pytest.raises(models.ModelOptionError, match="Did you mean 'width'"):
        build(widht=0.5)


# ---------------------------------------------------------------- fast_cnn (issue 12)


def test_fast_cnn_is_the_speed_run_layout(built):
    model = built[("fast_cnn", (32, 32, 3))]
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [32, 64, 64, 192, 192, 192, 192]
    assert all(c.kernel_size == (3, 3) and not c.use_bias for c in convs)
    # each block pools right after its first conv, so 32 -> 16 -> 8 -> 4
    assert [model.get_layer(f"b{i}a_pool").output_shape[1] for i in (1, 2, 3)] == [16, 8, 4]
    assert isinstance(model.get_layer("gmp"), keras.layers.GlobalMaxPooling2D)
    assert model.get_layer("logit_scale").scale == 0.125
    assert all(layer.momentum == 0.9 for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization))
    assert model.count_params() == 1_167_722
    assert all(c.kernel_regularizer is not None for c in convs)
    plain = models.create_model("fast_cnn", (32, 32, 3), 10, weight_decay=0, logit_scale=1, widths=(16, 32))
    assert "logit_scale" not in {layer.name for layer in plain.layers}
    assert all(c.kernel_regularizer is None for c in plain.layers if isinstance(c, keras.layers.Conv2D))
    assert plain.get_layer("b2b_conv").output_shape == (None, 8, 8, 32)


def test_fast_cnn_refuses_options_that_cannot_work():
    def build(shape=(32, 32, 3), **kw):
        return models.create_model("fast_cnn", shape, 10, **kw)

    for widths in ((), (64, 0), (64, 1.5), (True,)):
        with pytest.raises(models.ModelOptionError, match="widths and stem_width must be ints >= 1"):
            build(widths=widths)
    with pytest.raises(models.ModelOptionError, match="logit_scale must be a number > 0"):
        build(logit_scale=0)
    with pytest.raises(models.ModelOptionError, match="weight_decay"):
        build(weight_decay=-1.0)
    with pytest.raises(models.ModelOptionError, match=r"fast_cnn needs inputs of at least 16x16.*4 blocks"):
        build(widths=(8, 8, 8, 8), shape=(12, 12, 3))

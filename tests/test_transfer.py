"""Transfer learning offline: a backbone from one of our own runs, and keras.applications weights
from a local file (no network here). Real CIFAR-10 JPEGs, the real trainer, tiny models."""
from __future__ import annotations

import numpy as np
import pytest

from train import models
from train._tf import keras

# A resnet_small small enough to train an epoch in a few seconds.
TINY_RESNET = {"widths": [8, 16], "blocks": [1, 1], "strides": [2, 2], "stem_width": 8}


def _npz(path, ds, classes, n, seed=0):
    """An .npz of ``n`` stratified images of CIFAR-10 ``classes`` (relabelled 0..k-1)."""
    from train.data import Dataset, stratified_sample

    keep = np.isin(ds.y, classes)
    sub = Dataset(x=ds.x[keep], y=np.searchsorted(classes, ds.y[keep]), class_names=[ds.class_names[c] for c in classes])
    sub = stratified_sample(sub, n, seed=seed)
    np.savez(path, x=sub.x, y=sub.y, class_names=np.array(sub.class_names))
    return path


def _config(tmp, name, **kw):
    from train.config import TrainConfig

    return TrainConfig(colour="rgb", batch_size=32, lr_schedule="none", early_stopping_patience=0,
                       runs_dir=str(tmp), run_name=name, tensorboard=False, verbose=0, **kw)


@pytest.fixture(scope="module")
def cifar_npz(tmp_path_factory, shared_data):
    """Source (airplane, automobile, bird) and target (cat, deer, dog) sets of real CIFAR-10 images."""
    from train.data import load_dataset

    zip_path = shared_data / "cifar10-jpeg" / "cifar10-jpeg.zip"
    if not zip_path.is_file():
        pytest.fail(f"test data missing: {zip_path}")
    train = load_dataset(str(zip_path), split="train", colour="rgb")
    tmp = tmp_path_factory.mktemp("cifar")
    return _npz(tmp / "source.npz", train, [0, 1, 2], 300), _npz(tmp / "target.npz", train, [3, 4, 5], 240)


@pytest.fixture(scope="module")
def source_run(tmp_path_factory, cifar_npz):
    """A one-epoch resnet_small run on 300 images of 3 classes, through the real trainer."""
    from train.fit import run_training

    config = _config(tmp_path_factory.mktemp("runs"), "source", model="resnet_small", model_kwargs=TINY_RESNET,
                     data=str(cifar_npz[0]), epochs=1)
    return run_training(config, evaluate=False)


def _body(backbone):
    return [layer for layer in backbone.layers if not isinstance(layer, keras.layers.InputLayer)]


def _pixels(shape, n=5, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, *shape)).astype("float32")


def test_backbone_from_our_run_loads_and_predicts(source_run):
    saved = keras.models.load_model(source_run / "model.keras", compile=False)
    model = models.create_model("transfer", (32, 32, 3), 4, backbone_model=str(source_run))  # the run directory
    backbone = models.get_backbone(model)
    assert backbone.output_shape == (None, 16)  # cut at the run's global average pooling
    assert "resize" not in [layer.name for layer in model.layers]  # same 32x32 input: no resizing
    x = _pixels((32, 32, 3))
    features = keras.Model(saved.inputs, saved.get_layer("gap").output)
    np.testing.assert_allclose(backbone(x, training=False).numpy(), features(x, training=False).numpy(), atol=1e-5)
    probs = model.predict(x, verbose=0)
    assert probs.shape == (5, 4)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_stages_freeze_the_backbone_then_unfreeze_its_top(source_run):
    model = models.create_model("transfer", (32, 32, 3), 4, backbone_model=str(source_run / "model.keras"))
    backbone = models.get_backbone(model)
    body = _body(backbone)
    is_bn = lambda layer: isinstance(layer, keras.layers.BatchNormalization)  # noqa: E731

    models.set_transfer_stage(model, "head")
    assert not backbone.trainable
    assert {w.name.split("/")[0] for w in model.trainable_weights} == {"logits"}
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == 16 * 4 + 4

    models.set_transfer_stage(model, "fine_tune", fine_tune_layers=7)
    assert backbone.trainable
    for i, layer in enumerate(body):
        assert layer.trainable == (i >= len(body) - 7 and not is_bn(layer)), layer.name
    top = {w.name.split("/")[0] for w in backbone.trainable_weights}
    assert top and top <= {layer.name for layer in body[-7:]}

    models.set_transfer_stage(model, "fine_tune", fine_tune_layers=None)  # the whole backbone, BN still frozen
    assert all(layer.trainable != is_bn(layer) for layer in body)
    assert {w.name.split("/")[0] for w in model.trainable_weights} >= {"stem_conv", "logits"}

    models.set_transfer_stage(model, "head")
    assert {w.name.split("/")[0] for w in model.trainable_weights} == {"logits"}


def test_staged_training_changes_only_the_unfrozen_top(source_run, cifar_npz, tmp_path):
    """Head stage then fine-tune stage through run_training: the backbone's lower layers (and every
    BatchNormalization statistic) come out exactly as the source run saved them; the top convolution moved."""
    from train.fit import run_training

    config = _config(tmp_path, "transfer", model="transfer", model_kwargs={"backbone_model": str(source_run)},
                     data=str(cifar_npz[1]), epochs=1, fine_tune_epochs=1, fine_tune_layers=7)
    run_dir = run_training(config, evaluate=False)
    trained = models.get_backbone(keras.models.load_model(run_dir / "model.keras", compile=False))
    saved = keras.models.load_model(source_run / "model.keras", compile=False)
    body = _body(trained)
    top = {layer.name for layer in body[-7:] if not isinstance(layer, keras.layers.BatchNormalization)}
    moved = []
    for layer in body:
        if not layer.weights:
            continue
        same = all(np.array_equal(a, b) for a, b in zip(layer.get_weights(), saved.get_layer(layer.name).get_weights()))
        if layer.name in top:
            moved.append(layer.name)
            assert not same, f"{layer.name} was unfrozen for fine-tuning but did not change"
        else:
            assert same, f"{layer.name} was frozen but changed"
    assert set(moved) == {"s2b1_b_conv", "s2b1_proj_conv"}  # the convolutions among the top 7 layers


def test_keras_applications_weights_from_a_local_file(tmp_path):
    """weights='/path/to/file.h5' (e.g. the ImageNet file copied to an offline machine) is loaded
    into the backbone, at the file's own input size and when a 32x32 input is resized up to it."""
    app = keras.applications.MobileNetV2(alpha=0.35, weights=None, include_top=False, input_shape=(96, 96, 3))
    rng = np.random.default_rng(0)
    # Moved away from any initialiser's values (BN variances stay positive), so a random build cannot match.
    app.set_weights([w + rng.normal(0.0, 0.01, w.shape).astype(w.dtype) for w in app.get_weights()])
    path = tmp_path / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_96_no_top.h5"
    app.save_weights(str(path))
    expected = app.get_weights()

    for shape in ((96, 96, 3), (32, 32, 3)):
        model = models.create_model("transfer", shape, 3, backbone="MobileNetV2", weights=str(path),
                                    backbone_kwargs={"alpha": 0.35})
        if shape[0] == 32:
            assert model.get_layer("resize").output_shape == (None, 96, 96, 3)
        got = models.get_backbone(model).get_weights()
        assert len(got) == len(expected)
        for a, b in zip(got, expected):
            np.testing.assert_array_equal(a, b)
        probs = model.predict(_pixels(shape, n=2), verbose=0)
        assert probs.shape == (2, 3)

"""Training, evaluation report and cross-validation on real MNIST (golden accuracy, not just "it ran")."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from train.config import TrainConfig
from train.data import load_dataset, write_kaggle_csv
from train.errors import UsageError


@pytest.fixture(scope="module")
def mnist_run(mnist_dir, tmp_path_factory):
    """LeNet-5 trained briefly on 6,000 real MNIST digits; the 10k official test set is held out."""
    from train.fit import run_training

    runs = tmp_path_factory.mktemp("runs")
    config = TrainConfig(model="lenet5", data=str(mnist_dir), train_limit=6000, epochs=6, batch_size=64,
                         runs_dir=str(runs), verbose=0)
    return run_training(config)


def test_golden_lenet5_reaches_accuracy_on_held_out_mnist(mnist_run):
    metrics = json.loads((mnist_run / "metrics.json").read_text())
    assert metrics["test"]["n"] == 10000
    assert metrics["validation"]["n"] == 6000  # 10% of the 60,000 training images, stratified
    # 6,000 images x 6 epochs: LeNet-5 reliably clears 95.5% on the untouched 10k test set.
    assert metrics["test"]["accuracy"] >= 0.955, metrics["test"]["accuracy"]
    assert metrics["test"]["f1_macro"] >= 0.95
    assert 0.99 < metrics["test"]["roc_auc_macro"] <= 1.0


def test_run_directory_holds_everything(mnist_run):
    for name in ("model.keras", "config.json", "run.json", "labels.txt", "history.json", "dataset.json", "metrics.json",
                 "report.html"):
        assert (mnist_run / name).is_file(), name
    assert (mnist_run.parent / "LATEST").read_text().strip() == mnist_run.name
    info = json.loads((mnist_run / "run.json").read_text())
    assert info["input_shape"] == [28, 28, 1]
    assert info["class_names"] == [str(i) for i in range(10)]
    assert info["polarity"] == "light_on_dark"
    assert info["split_sizes"] == {"train": 6000, "val": 6000, "test": 10000}
    config = TrainConfig.model_validate_json((mnist_run / "config.json").read_text())
    assert config.model == "lenet5" and config.train_limit == 6000
    history = json.loads((mnist_run / "history.json").read_text())
    assert len(history["loss"]) == info["epochs_run"] and history["loss"][-1] < history["loss"][0]


def test_metrics_and_report_content(mnist_run):
    m = json.loads((mnist_run / "metrics.json").read_text())["test"]
    cm = np.array(m["confusion_matrix"])
    assert cm.shape == (10, 10) and cm.sum() == 10000
    assert np.trace(cm) / cm.sum() == pytest.approx(m["accuracy"])
    assert [c["support"] for c in m["per_class"]] == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert set(m["roc_auc"]) == {str(i) for i in range(10)}
    pair = m["confused_pairs"][0]
    assert pair["total"] == pair["first_as_second"] + pair["second_as_first"] > 0
    timing = json.loads((mnist_run / "metrics.json").read_text())["timing"]
    assert timing["batch1_ms_p50"] > 0 and timing["batched_ms_per_image"] < timing["batch1_ms_p50"]
    html = (mnist_run / "report.html").read_text()
    for needle in ("Loss and accuracy", "Most confused pairs", "Misclassified", "confusion matrix", "ROC"):
        assert needle in html
    assert html.count("data:image/png;base64,") >= 6  # curves + 2x (confusion, ROC, gallery)


def test_evaluate_cli_and_kaggle_submission(mnist_run, mnist_dir, tmp_path):
    test = load_dataset(str(mnist_dir), split="test").subset(range(50))
    csv = write_kaggle_csv(test, tmp_path / "test.csv", with_label=False)
    out = tmp_path / "submission.csv"
    r = subprocess.run([sys.executable, "-m", "train.evaluate", "--run", str(mnist_run), "--predict", str(csv), "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = out.read_text().splitlines()
    assert rows[0] == "ImageId,Label" and len(rows) == 51
    pred = np.array([int(r.split(",")[1]) for r in rows[1:]])
    assert [int(r.split(",")[0]) for r in rows[1:]] == list(range(1, 51))
    assert (pred == test.y).mean() >= 0.9


def test_train_cli_rejects_bad_input(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("label,pixel0\n1,abc\n")
    r = subprocess.run([sys.executable, "-m", "train.train", "--data", str(bad), "--runs-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 5  # ExitCode.INPUT: the data is unusable
    assert "bad.csv" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "train.train", "--model", "lenet6", "--data", str(bad)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "lenet5" in r.stderr  # close-match suggestion
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: lenet5\nepochz: 3\n")
    r = subprocess.run([sys.executable, "-m", "train.train", "--config", str(cfg)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 3 and "epochz" in r.stderr  # ExitCode.CONFIG
    assert "exit codes:" in subprocess.run([sys.executable, "-m", "train.train", "--help"], capture_output=True,
                                           text=True, timeout=300).stdout


def test_a_library_value_error_is_a_bug_not_bad_input(capsys):
    """Only our errors (they carry an exit code) become `error: ...` and their code; a ValueError raised
    inside a library propagates with its traceback (exit 1), so it is never reported as a config error."""
    from sdk.errors import ConfigError, ExitCode
    from train.errors import run_command

    def library_bug():
        raise ValueError("operands could not be broadcast together")

    with pytest.raises(ValueError, match="broadcast"):
        run_command(library_bug)

    def bad_config():
        raise ConfigError("device.yaml: unknown key 'fps_cpa'")

    assert run_command(bad_config) == ExitCode.CONFIG == 3
    assert capsys.readouterr().err == "error: device.yaml: unknown key 'fps_cpa'\n"
    assert run_command(lambda: None) == 0


def test_config_file_with_flag_override(tmp_path):
    from train.train import build_parser, config_from_args

    cfg = tmp_path / "run.yaml"
    cfg.write_text("model: resnet_small\nepochs: 7\naugment:\n  enabled: true\n  rotation: 5\n")
    config = config_from_args(build_parser().parse_args(["--config", str(cfg), "--epochs", "3", "--model-kw", "dropout=0.2"]))
    assert (config.model, config.epochs, config.augment.rotation, config.model_kwargs) == ("resnet_small", 3, 5, {"dropout": 0.2})


def test_stratified_kfold_crossval(mnist_dir, tmp_path):
    from train.analysis.crossval import cross_validate

    config = TrainConfig(model="lenet5", data=str(mnist_dir), train_limit=3000, epochs=3, runs_dir=str(tmp_path), verbose=0,
                         tensorboard=False)
    result = cross_validate(config, folds=3, out_dir=tmp_path / "cv")
    assert len(result["per_fold"]) == 3
    assert sum(f["n_val"] for f in result["per_fold"]) == 3000
    assert result["summary"]["accuracy"]["mean"] > 0.75
    assert result["summary"]["accuracy"]["std"] >= 0
    assert json.loads((tmp_path / "cv" / "crossval.json").read_text())["folds"] == 3


def test_augmentation_keeps_range_and_shape(mnist_dir):
    from train.config import AugmentConfig
    from train.data.pipeline import make_augmenter, make_tf_dataset

    ds = load_dataset(str(mnist_dir), split="test").subset(range(64))
    aug = make_augmenter(AugmentConfig(enabled=True, rotation=15, shift=0.1, zoom=0.1, crop=0.1, brightness=0.2,
                                       contrast=0.2, noise_std=8, elastic=20), (28, 28, 1), 0.0, seed=1)
    x, y = next(iter(make_tf_dataset(ds, 64, training=True, augmenter=aug)))
    x = x.numpy()
    assert x.shape == (64, 28, 28, 1) and x.min() >= 0 and x.max() <= 255
    assert not np.allclose(np.sort(x.ravel()), np.sort(ds.x.astype(np.float32).ravel()))


def test_elastic_distortion_moves_strokes_locally(mnist_dir):
    from train.config import AugmentConfig
    from train.data.pipeline import make_augmenter

    x = load_dataset(str(mnist_dir), split="test").x[:64].astype(np.float32)
    cfg = AugmentConfig(enabled=True, rotation=0, shift=0, zoom=0, elastic=34, elastic_sigma=4)
    aug = make_augmenter(cfg, (28, 28, 1), 0.0, seed=3)
    out = aug(x, training=True).numpy()
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 255
    assert np.abs(out - x).mean() > 5  # the strokes moved
    np.testing.assert_array_equal(aug(x, training=False).numpy(), x)  # inference never distorts

    def centre(img):
        ys, xs = np.mgrid[:28, :28]
        m = img[..., 0]
        return np.array([(m * ys).sum(), (m * xs).sum()]) / m.sum()

    # local warps, not a translation: the ink stays where it was and keeps its amount
    shifts = [np.linalg.norm(centre(a) - centre(b)) for a, b in zip(out, x)]
    assert np.median(shifts) < 2.0 and max(shifts) < 5.0, shifts
    ink = out.sum(axis=(1, 2, 3)) / x.sum(axis=(1, 2, 3))
    assert 0.8 < np.median(ink) < 1.2 and ink.min() > 0.4 and ink.max() < 2.0, ink
    # colour images: every channel of the pixels pulled in from outside gets the fill value
    rgb = np.full((2, 16, 16, 3), 100.0, np.float32)
    warped = make_augmenter(cfg, (16, 16, 3), 100.0, seed=3)(rgb, training=True).numpy()
    np.testing.assert_allclose(warped, 100.0, atol=1e-3)
    # seeded: the same seed gives the same distortions
    again = make_augmenter(cfg, (28, 28, 1), 0.0, seed=3)(x, training=True).numpy()
    np.testing.assert_array_equal(again, out)


def test_elastic_flag_stands_alone():
    from train.data.pipeline import make_augmenter
    from train.train import build_parser, config_from_args

    config = config_from_args(build_parser().parse_args(["--data", "mnist", "--elastic", "34", "--elastic-sigma", "5"]))
    assert (config.augment.enabled, config.augment.elastic, config.augment.elastic_sigma) == (False, 34, 5)
    aug = make_augmenter(config.augment, (28, 28, 1), 0.0, 1)
    assert [type(layer).__name__ for layer in aug.layers] == ["RandomElastic"]


def test_cutout_blanks_one_clipped_square_per_image():
    from train.data.pipeline import make_augmenter
    from train.train import build_parser, config_from_args

    config = config_from_args(build_parser().parse_args(["--data", "cifar", "--cutout", "0.5"]))
    aug = make_augmenter(config.augment, (32, 32, 3), 7.0, seed=5)
    assert [type(layer).__name__ for layer in aug.layers] == ["RandomCutout"]
    x = np.full((256, 32, 32, 3), 100.0, np.float32)
    out = aug(x, training=True).numpy()
    blank = out == 7.0
    assert set(np.unique(out)) == {7.0, 100.0}
    assert (blank.all(axis=-1) == blank.any(axis=-1)).all()  # every channel of a blanked pixel
    area = blank[..., 0].sum(axis=(1, 2))
    assert area.max() == 16 * 16 and area.min() >= 8 * 8  # a 16x16 square, at worst clipped to a corner quarter
    assert 0 < (area == 256).mean() < 1  # some whole, some clipped at an edge
    for img in blank[:32, ..., 0]:  # one axis-aligned rectangle: its bounding box is all blank
        ys, xs = np.nonzero(img)
        assert img[ys.min():ys.max() + 1, xs.min():xs.max() + 1].all()
    np.testing.assert_array_equal(aug(x, training=False).numpy(), x)  # never at inference
    assert not np.array_equal(aug(x, training=True).numpy(), out)  # a new square every batch
    with pytest.raises(UsageError, match="--cutout must be within 0..1"):
        config_from_args(build_parser().parse_args(["--data", "cifar", "--cutout", "2"]))


def test_crossval_of_a_run_lands_in_its_report(mnist_run, tmp_path, capsys):
    from train.crossval import main

    code = main(["--run", str(mnist_run), "--train-limit", "1500", "--epochs", "2", "--folds", "2",
                 "--out", str(tmp_path / "cv"), "--quiet"])
    assert code == 0, capsys.readouterr().err
    section = json.loads((mnist_run / "analysis" / "crossval.json").read_text())
    assert section["data"]["folds"] == 2 and set(section["data"]["summary"]["accuracy"]) == {"mean", "std"}
    assert "<!-- analysis:crossval -->" in (mnist_run / "report.html").read_text()
    assert main(["--run", str(tmp_path / "none")]) == 6  # ExitCode.BUNDLE

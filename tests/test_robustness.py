"""Robustness (issue 6) on real MNIST: corruptions, FGSM/PGD on the float model transferred to the
real INT8 bundle under LiteRT, the report section, bad input, and the two training defences."""
from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from train.analysis.robustness import CORRUPTIONS
from train.robustness import main

EPSILONS = [0.0, 8.0, 32.0]


@pytest.fixture(scope="module")
def run_dir(small_run, tmp_path_factory):
    """A copy of the shared small run, with its report, so the analysis does not touch the original."""
    from train.report import evaluate_run

    dst = tmp_path_factory.mktemp("robustness") / "run"
    shutil.copytree(small_run, dst, ignore=shutil.ignore_patterns("bundles", "analysis"))
    evaluate_run(dst, timing=False)
    return dst


@pytest.fixture(scope="module")
def bundle(run_dir, tmp_path_factory):
    from train.export import export_bundle

    return export_bundle("rpi", run_dir, tmp_path_factory.mktemp("bundle") / "rpi", latency_runs=20).bundle_dir


@pytest.fixture(scope="module")
def result(run_dir, bundle):
    """The CLI on 500 test images; returns (data, stdout)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["--run", str(run_dir), "--bundle", str(bundle), "--samples", "500", "--pgd-steps", "5",
                     "--epsilons", *map(str, EPSILONS)])
    assert code == 0
    data = json.loads((run_dir / "analysis" / "robustness.json").read_text())["data"]
    return data, out.getvalue()


def test_corruptions_lower_accuracy_with_severity(result):
    data, _ = result
    assert data["samples"] == 500 and data["split"] == "test"
    clean = data["clean"]["float"]
    assert clean > 0.9
    for name, c in data["corruptions"].items():
        acc = [clean, *c["float"]]
        assert c["severities"] == [1, 2, 3, 4, 5] and len(c["values"]) == 5
        assert all(b <= a + 0.03 for a, b in zip(acc, acc[1:])), (name, acc)  # monotone, up to sampling noise
        assert acc[-1] < clean - 0.1, (name, acc)  # severity 5 clearly hurts


def test_fgsm_hurts_far_more_than_random_noise_of_the_same_size(result):
    data, _ = result
    i = EPSILONS.index(32.0)
    fgsm, random = data["attacks"]["fgsm"]["float"][i], data["attacks"]["random"]["float"][i]
    assert random > data["clean"]["float"] - 0.05
    assert fgsm < random - 0.3, (fgsm, random)


def test_pgd_is_at_least_as_strong_as_fgsm(result):
    data, _ = result
    fgsm, pgd = data["attacks"]["fgsm"], data["attacks"]["pgd"]
    assert pgd["steps"] == 5 and pgd["random_start"]
    assert pgd["float"][0] == fgsm["float"][0] == data["clean"]["float"]  # eps 0 is the clean image
    for e, f, p in zip(fgsm["epsilons"], fgsm["float"], pgd["float"]):
        assert p <= f + 0.01, (e, f, p)


def test_int8_bundle_is_measured_too(result):
    data, stdout = result
    assert data["models"]["tflite"] == "INT8 TFLite (rpi)"
    assert abs(data["clean"]["tflite"] - data["clean"]["float"]) < 0.02
    for c in data["corruptions"].values():
        assert len(c["tflite"]) == len(c["float"]) == 5
    fgsm = data["attacks"]["fgsm"]
    assert fgsm["tflite"][-1] < data["clean"]["tflite"] - 0.3  # the attack transfers to the INT8 model
    assert "INT8 TFLite (rpi)" in stdout and "gaussian_noise s5" in stdout and "eps 32 px" in stdout


def test_report_gets_the_section(result, run_dir):
    report = (run_dir / "report.html").read_text()
    start, end = report.index("<!-- analysis:robustness -->"), report.index("<!-- /analysis:robustness -->")
    section = report[start:end]
    assert "<h2>Robustness</h2>" in section
    assert section.count("data:image/png;base64,") == 3  # corruption curves, attack curves, examples
    assert "INT8 TFLite (rpi)" in section and "occlusion s5" in section


def test_corruptions_are_deterministic_uint8(mnist_test):
    x = mnist_test.x[:20]
    for name, c in CORRUPTIONS.items():
        a = c(x, 3, np.random.default_rng([7, 3]))
        b = c(x, 3, np.random.default_rng([7, 3]))
        assert a.dtype == np.uint8 and a.shape == x.shape, name
        assert np.array_equal(a, b), name
        assert not np.array_equal(a, x), name


@pytest.mark.parametrize(
    "args, code, needles",
    [
        (["--corruptions", "fog"], 2, ["--corruptions", "'fog'", "gaussian_noise, blur, brightness, contrast, rotation, occlusion"]),
        (["--corruptions", "blurr"], 2, ["did you mean 'blur'"]),
        (["--epsilons", "300"], 2, ["--epsilons", "0..255"]),
        (["--epsilons", "-1"], 2, ["--epsilons", "0..255"]),
        (["--severities", "6"], 2, ["--severities", "1, 2, 3, 4, 5"]),
        (["--attacks", "cw"], 2, ["--attacks", "fgsm, pgd, random"]),
        (["--samples", "0"], 2, ["--samples"]),
        (["--bundle", "{tmp}/no-bundle"], 6, ["--bundle", "not found"]),
    ],
)
def test_bad_input_names_the_flag(run_dir, tmp_path, capsys, args, code, needles):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert main(["--run", str(run_dir), *args]) == code
    err = capsys.readouterr().err
    for needle in needles:
        assert needle in err, err


def test_missing_run_exits_6(tmp_path):
    r = subprocess.run([sys.executable, "-m", "train.robustness", "--run", str(tmp_path / "nope")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 6
    assert "--run" in r.stderr and "not found" in r.stderr and "Traceback" not in r.stderr


def test_adversarial_training_saves_a_plain_model_that_exports(mnist_dir, tmp_path):
    from sdk.runtime import load_bundle
    from train._tf import keras
    from train.data import stratified_sample
    from train.export import export_bundle
    from train.fit import run_training
    from train.runs import load_run
    from train.train import build_parser, config_from_args

    args = build_parser().parse_args([
        "--model", "lenet5", "--data", str(mnist_dir), "--train-limit", "1000", "--epochs", "2", "--lr-schedule", "none",
        "--early-stopping-patience", "0", "--runs-dir", str(tmp_path), "--run-name", "adv", "--no-tensorboard", "--quiet",
        "--adversarial", "pgd", "--adv-epsilon", "16", "--adv-pgd-steps", "2",
    ])
    config = config_from_args(args)
    assert config.adversarial.model_dump() == {"method": "pgd", "epsilon": 16.0, "ratio": 0.5, "pgd_steps": 2}
    run = run_training(config, evaluate=False)
    history = json.loads((run / "history.json").read_text())
    assert history["loss"][-1] < history["loss"][0]
    model = keras.models.load_model(run / "model.keras")
    assert type(model).__name__ == "Functional"  # not the AdversarialTrainer
    assert model.name == "lenet5" and model.output_shape == (None, 10)
    splits = load_run(run).splits()
    small = {"train": splits["train"], "val": stratified_sample(splits["val"], 300), "test": None}
    result = export_bundle("rpi", run, tmp_path / "bundle", latency_runs=5, splits=small)
    assert load_bundle(result.bundle_dir).manifest.input.dtype == "uint8"


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--adversarial", "fgsm"], "--adv-epsilon"),
        (["--adversarial", "fgsm", "--adv-epsilon", "300"], "--adv-epsilon"),
        (["--adversarial", "pgd", "--adv-epsilon", "8", "--adv-ratio", "1.5"], "--adv-ratio"),
        (["--adv-epsilon", "8"], "--adversarial fgsm|pgd"),
        (["--noise-std", "200"], "--noise-std"),
        (["--elastic", "-1"], "--elastic must be within 0..100"),
        (["--elastic", "34", "--elastic-sigma", "0"], "--elastic-sigma"),
    ],
)
def test_train_cli_rejects_bad_defence_options(tmp_path, capsys, args, needle):
    from train.train import main as train_main

    assert train_main(["--data", "mnist", "--runs-dir", str(tmp_path), *args]) == 2
    assert needle in capsys.readouterr().err


def test_adversarial_config_rejects_unknown_keys():
    from pydantic import ValidationError

    from train.config import TrainConfig

    with pytest.raises(ValidationError, match="extra"):
        TrainConfig(adversarial={"method": "fgsm", "epsilon": 8, "steps": 3})
    with pytest.raises(ValidationError):
        TrainConfig(adversarial={"method": "cw", "epsilon": 8})


def test_noise_std_alone_is_noise_injection():
    from train.config import AugmentConfig
    from train.data.pipeline import make_augmenter

    assert make_augmenter(AugmentConfig(), (28, 28, 1), 0.0, 1) is None
    aug = make_augmenter(AugmentConfig(noise_std=30), (28, 28, 1), 0.0, 1)
    assert [type(layer).__name__ for layer in aug.layers] == ["GaussianNoise"]
    x = np.full((64, 28, 28, 1), 100.0, np.float32)
    noisy = aug(x, training=True).numpy()
    assert abs(noisy.mean() - 100) < 1 and 28 < noisy.std() < 32
    assert np.array_equal(aug(x, training=False).numpy(), x)


def test_augmentation_differs_every_epoch():
    """Each epoch iterates the tf.data pipeline afresh: seeded layers must not restart their random
    sequence with it (GaussianNoise did, so every epoch saw the same noise)."""
    from train._tf import tf
    from train.config import AugmentConfig
    from train.data.pipeline import make_augmenter

    x = np.random.default_rng(0).uniform(0, 255, (8, 28, 28, 1)).astype(np.float32)
    for cfg in ({"noise_std": 10}, {"hflip": True}, {"rotation": 10}, {"shift": 0.1}, {"elastic": 30}):
        geometric = {"rotation": 0, "shift": 0, "zoom": 0, **cfg}
        aug = make_augmenter(AugmentConfig(enabled=True, **geometric), (28, 28, 1), 0.0, 1)
        ds = tf.data.Dataset.from_tensor_slices(x).batch(8).map(lambda b: aug(b, training=True))
        first, second = (next(iter(ds)).numpy() for _ in range(2))
        assert not np.allclose(first, second), f"{cfg}: the same augmentation in two epochs"

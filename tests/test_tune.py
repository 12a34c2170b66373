"""Hyperparameter search (``train.tune``) on real MNIST: samplers, pruning, results files, best config round trip."""
from __future__ import annotations

import csv
import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from train.config import TrainConfig

GRID_SPACE = """\
learning_rate: {type: float, low: 0.0001, high: 0.01, log: true, grid: [0.001, 0.003]}
batch_size: {type: categorical, choices: [32, 64]}
"""


@pytest.fixture(scope="module")
def base(mnist_dir, tmp_path_factory) -> TrainConfig:
    """1,000 real MNIST training images, 1,200 for validation, one epoch: about 3-5 s per trial."""
    return TrainConfig(model="lenet5", data=str(mnist_dir), train_limit=1000, val_fraction=0.02, epochs=1,
                       runs_dir=str(tmp_path_factory.mktemp("runs")), tensorboard=False, verbose=0)


@pytest.fixture(scope="module")
def grid_result(base, tmp_path_factory):
    from train.analysis.tune import load_space, tune

    out = tmp_path_factory.mktemp("grid")
    (out / "space.yaml").write_text(GRID_SPACE)
    return tune(base, load_space(out / "space.yaml"), trials=6, sampler="grid", pruner="none", out_dir=out / "search",
                keep="best")


def test_grid_sampler_visits_exactly_the_grid(grid_result):
    visited = sorted((r["params"]["learning_rate"], r["params"]["batch_size"]) for r in grid_result["trials"])
    assert visited == sorted(itertools.product([0.001, 0.003], [32, 64]))  # 4 points, although --trials 6
    assert all(r["state"] == "complete" and r["epochs_run"] == 1 and r["seconds"] > 0 for r in grid_result["trials"])
    assert set(grid_result["importance"]) == {"learning_rate", "batch_size"}
    assert sum(grid_result["importance"].values()) == pytest.approx(1.0, abs=1e-3)


def test_results_files_and_best_config(grid_result):
    out = grid_result["out_dir"]
    best = grid_result["best"]
    rows = list(csv.DictReader(open(f"{out}/results.csv")))
    assert [int(r["trial"]) for r in rows] == [0, 1, 2, 3]
    assert max(float(r["val_accuracy"]) for r in rows) == pytest.approx(best["value"], abs=1e-4)
    saved = json.loads(open(f"{out}/results.json").read())
    assert saved["best"]["trial"] == best["trial"] and len(saved["trials"]) == 4
    # --keep best: only the winner's run directory is left
    assert sorted(p.name for p in (Path(out) / "trials").glob("trial_*")) == [f"trial_{best['trial']:03d}"]
    config = TrainConfig.from_file(best["config"])
    assert (config.learning_rate, config.batch_size) == (best["params"]["learning_rate"], best["params"]["batch_size"])
    assert (config.train_limit, config.epochs, config.run_name) == (1000, 1, None)


def test_best_config_round_trip_through_train_cli(grid_result, tmp_path):
    """``python -m train.train --config best_config.yaml`` (its entry point, in-process) reproduces the best trial."""
    from train.train import main

    assert main(["--config", grid_result["best"]["config"], "--runs-dir", str(tmp_path), "--run-name", "rt", "--quiet"]) == 0
    metrics = json.loads((tmp_path / "rt" / "metrics.json").read_text())
    # the same 1,200 validation images as the search, and the seed: the same accuracy as the best trial
    assert metrics["validation"]["accuracy"] == pytest.approx(grid_result["best"]["value"], abs=0.02)
    # 1,000 images, one epoch: LeNet-5 clears 75% on the untouched 10k test set
    assert metrics["test"]["n"] == 10000 and metrics["test"]["accuracy"] >= 0.75


def test_default_space_follows_table_iii_where_the_model_can():
    from train.analysis.tune import apply_params, default_space
    from train.models import create_model

    space, notes = default_space("lenet5", epochs_max=30)
    assert space["learning_rate"].grid == [0.001, 0.01, 0.1] and space["learning_rate"].log
    assert space["batch_size"].choices == [32, 64, 128] and space["epochs"].grid == [10, 20, 30]
    assert {"model_kwargs.width", "model_kwargs.dropout"} < set(space) and "model_kwargs.blocks" not in space
    assert any("lenet5 has no depth option" in n for n in notes) and any("kernel-size" in n for n in notes)
    space, notes = default_space("resnet_small", epochs_max=3)
    assert space["epochs"].grid == [1, 2, 3]
    assert space["model_kwargs.blocks"].choices == [[1, 1, 1], [2, 2, 2], [3, 3, 3]]
    assert space["model_kwargs.widths"].grid_values() == ["[16, 32, 64]", "[32, 64, 128]", "[48, 96, 192]"]
    config = apply_params(TrainConfig(model="resnet_small"), {"model_kwargs.blocks": [1, 1, 1], "model_kwargs.widths": [16, 32, 64]})
    assert create_model("resnet_small", (28, 28, 1), 10, **config.model_kwargs).count_params() < 200_000
    _, notes = default_space("paper_cnn")
    assert any("paper_cnn has no depth option" in n for n in notes) and any("paper_cnn has no width" in n for n in notes)


def test_random_sampler_is_seeded(base, tmp_path):
    from train.analysis.tune import default_space, tune

    space, _ = default_space("lenet5", epochs_max=1)
    first, again = (tune(base.model_copy(update={"seed": 3}), space, trials=1, sampler="random", out_dir=tmp_path / str(i))
                    ["trials"][0]["params"] for i in range(2))
    assert first == again
    assert 1e-4 <= first["learning_rate"] <= 0.1 and first["batch_size"] in (32, 64, 128) and first["epochs"] == 1
    assert 0.5 <= first["model_kwargs.width"] <= 2 and 0 <= first["model_kwargs.dropout"] <= 0.5


def test_cli_tpe_matches_library_and_is_seeded(base, mnist_dir, tmp_path):
    from train.analysis.tune import default_space, tune

    cmd = [sys.executable, "-m", "train.tune", "--model", "lenet5", "--data", str(mnist_dir), "--train-limit", "1000",
           "--val-fraction", "0.02", "--epochs-max", "1", "--trials", "2", "--seed", "7", "--out", str(tmp_path / "cli"),
           "--quiet"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "val_accuracy" in r.stdout and "best: trial" in r.stdout and "importance:" in r.stdout
    assert "lenet5 has no depth option" in r.stdout  # what Table III asks for but the model cannot vary
    cli = json.loads((tmp_path / "cli" / "results.json").read_text())
    assert cli["sampler"] == "tpe" and len(cli["trials"]) == 2
    lib = tune(base.model_copy(update={"seed": 7}), default_space("lenet5", 1)[0], trials=2, out_dir=tmp_path / "lib")
    assert [t["params"] for t in lib["trials"]] == [t["params"] for t in cli["trials"]]


def test_median_pruner_stops_a_diverging_trial_of_a_resumed_study(base, tmp_path):
    """Two sane trials, then the same study (sqlite) resumed with an absurd learning rate: pruned after epoch 1."""
    from train.analysis.tune import ParamSpec, tune

    common = dict(sampler="random", pruner="median", prune_startup=2, study_name="prune",
                  storage=f"sqlite:///{tmp_path / 'tune.db'}", out_dir=tmp_path / "out")
    two_epochs = base.model_copy(update={"epochs": 2})
    tune(two_epochs, {"learning_rate": ParamSpec(type="float", low=0.001, high=0.001)}, trials=2, **common)
    result = tune(two_epochs, {"learning_rate": ParamSpec(type="float", low=5.0, high=5.0)}, trials=1, **common)
    states = [(r["state"], r["epochs_run"]) for r in result["trials"]]
    assert states == [("complete", 2), ("complete", 2), ("pruned", 1)]
    assert result["trials"][2]["val_accuracy"] < 0.5 < result["trials"][0]["val_accuracy"]
    assert result["best"]["params"] == {"learning_rate": 0.001}


# Bad flags exit 2; a space file that is missing, malformed or does not fit the model is a config error, 3.
@pytest.mark.parametrize("args, space, code, needles", [
    (["--sampler", "annealing"], None, 2, ["--sampler", "tpe", "random", "grid"]),
    (["--pruner", "sometimes"], None, 2, ["--pruner", "median", "hyperband", "none"]),
    (["--metric", "f1"], None, 2, ["--metric", "val_accuracy"]),
    (["--model", "lenet6"], None, 2, ["lenet5"]),
    (["--trials", "0"], None, 2, ["--trials"]),
    (["--sampler", "grid"], "learning_rate: {type: float, low: 0.0001, high: 0.01}\n", 2, ["learning_rate", "grid"]),
    ([], "epochz: {type: int, low: 1, high: 3}\n", 3, ["epochz", "Valid:", "learning_rate", "model_kwargs.width"]),
    ([], "learning_rate: {type: float, low: 0.1, high: 0.001}\n", 3, ["learning_rate", "above"]),
    ([], "learning_rate: {type: float, low: 0, high: 0.1, log: true}\n", 3, ["learning_rate", "log"]),
    ([], "batch_size: {type: int, low: 0, high: 64}\n", 3, ["batch_size", "0"]),
    ([], "batch_size: {type: categorical}\n", 3, ["batch_size", "choices"]),
    ([], "learning_rate: [0.1\n", 3, ["cannot parse"]),
    (["--space", "no/such/space.yaml"], None, 3, ["no/such/space.yaml", "not found"]),
    (["--epochs-max", "3"], "epochs: {type: int, low: 1, high: 3}\n", 2, ["--epochs-max", "--space"]),
])
def test_bad_input_is_a_clear_error(args, space, code, needles, mnist_dir, tmp_path, capsys):
    from train.tune import main

    argv = ["--data", str(mnist_dir), "--out", str(tmp_path / "out"), *args]
    if space is not None:
        (tmp_path / "space.yaml").write_text(space)
        argv += ["--space", str(tmp_path / "space.yaml")]
    try:
        exit_code = main(argv)
    except SystemExit as e:  # argparse refuses unknown choices itself
        exit_code = e.code
    err = capsys.readouterr().err
    assert exit_code == code, err
    assert all(n in err for n in needles), err
    assert "Traceback" not in err and not (tmp_path / "out").exists()

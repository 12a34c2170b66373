"""train.retrain on real data: a LeNet-5 trained on MNIST learns the Semeion digits (another set of
writers) from a few labelled samples, with replay, and keeps its MNIST accuracy; bad input exits
with the documented codes."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from train.data import load_dataset, stratified_sample, stratified_split

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def semeion(shared_data):
    ds = load_dataset(str(shared_data / "semeion" / "semeion.data"))
    parts = stratified_split(ds, val_fraction=0.5, seed=0)
    return parts["train"], parts["val"]


def _npz(path, ds):
    np.savez_compressed(path, x_train=ds.x, y_train=ds.y)
    return path


def test_retrain_learns_the_new_domain_without_forgetting(small_run, semeion, tmp_path):
    from sdk.bundle import verify_bundle
    from sdk.runtime import load_bundle
    from train._tf import keras
    from train.loop.retrain import RetrainSettings, accuracy, retrain

    pool, shifted_test = semeion
    feedback = _npz(tmp_path / "feedback.npz", stratified_sample(pool, 300, seed=0))
    res = retrain(small_run, feedback, settings=RetrainSettings(holdout=0.3), out_dir=tmp_path / "runs",
                  target="rpi", export_kwargs={"latency_runs": 20})
    r = res.report
    assert r["feedback_counts"] == {"labelled": 300, "learn": 210, "held_out": 90,
                                    "per_class": r["feedback_counts"]["per_class"]}
    assert r["settings"]["replay"] > 0
    # Judged on data the fine-tuning never saw: the held-out feedback and the MNIST 10k test set.
    assert r["after"]["feedback_held_out"] > r["before"]["feedback_held_out"] + 0.03, r
    assert r["forgetting_on"] == "original_test" and r["forgetting_pt"] <= 0.5, r
    assert not res.failures, res.failures
    before = keras.models.load_model(small_run / "model.keras")
    after = keras.models.load_model(res.run_dir / "model.keras")
    assert accuracy(after, shifted_test) > accuracy(before, shifted_test) + 0.03
    # The new run is a complete run directory and its bundle is a valid, loadable rpi bundle.
    info = json.loads((res.run_dir / "run.json").read_text())
    assert info["parent_run"] == str(small_run) and info["class_names"] == [str(i) for i in range(10)]
    manifest = verify_bundle(res.bundle)
    assert manifest.target == "rpi" and manifest.version == res.run_dir.name
    assert manifest.input.preprocess == "digit"
    assert load_bundle(res.bundle).labels == manifest.labels
    assert json.loads((res.run_dir / "retrain.json").read_text())["bundle"] == str(res.bundle)


def test_without_replay_every_epoch_is_feedback(small_run, semeion):
    from train.loop.retrain import RetrainSettings, _mix, epoch_size

    pool, _ = semeion
    learn = stratified_sample(pool, 100, seed=0)
    s = RetrainSettings()
    size = epoch_size(len(learn), s)
    alone = _mix(learn, None, s.feedback_share, 0, size)
    replay = stratified_sample(pool, 60, seed=1)
    mixed = _mix(learn, replay, 0.5, 0, 200)
    assert len(alone) == size  # same number of steps as with replay
    assert len(mixed) == 200
    assert np.bincount(alone.y, minlength=10).min() >= size // 10 - 40


def test_cli_errors(small_run, tmp_path, capsys):
    from train.loop.retrain import main

    assert main(["--base", str(tmp_path / "nope"), "--feedback", str(tmp_path), "--target", "rpi"]) == 3
    assert "nope" in capsys.readouterr().err
    # A feedback label the base model does not know: exit 5, naming it and the valid classes.
    folder = tmp_path / "fb"
    for label in ("3", "x"):
        (folder / label).mkdir(parents=True)
        for i in range(3):
            cv2.imwrite(str(folder / label / f"{i}.png"), np.full((28, 28), 40 * i, np.uint8))
    code = main(["--base", str(small_run), "--feedback", str(folder), "--no-export", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 5 and "'x'" in err and "valid" in err
    with pytest.raises(SystemExit) as e:
        main(["--base", str(small_run), "--feedback", str(folder)])
    assert e.value.code == 2
    assert "--bundle" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--base", str(small_run), "--feedback", str(folder), "--target", "tpu9"])
    assert "valid: " in capsys.readouterr().err

"""train.retrain on real data: a LeNet-5 trained on MNIST learns the Semeion digits (another set of
writers) from a few labelled samples, with replay, and keeps its MNIST accuracy; stored frames become
model inputs through the device's own preprocessing; bad input exits with the documented codes."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from sdk import messages
from sdk.bundle import InputSpec, Manifest, OutputSpec
from sdk.config import PreprocessSettings
from sdk.preprocess import Preprocessor
from train.data import load_dataset, stratified_sample, stratified_split

LABELS = [str(i) for i in range(10)]


@pytest.fixture(scope="module")
def semeion(shared_data):
    ds = load_dataset(str(shared_data / "semeion" / "semeion.data"))
    parts = stratified_split(ds, val_fraction=0.5, seed=0)
    return parts["train"], parts["val"]


def _npz(path, ds):
    np.savez_compressed(path, x_train=ds.x, y_train=ds.y)
    return path


@pytest.mark.slow
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


@pytest.mark.slow
def test_without_replay_every_epoch_is_feedback(small_run, semeion):
    from train.loop.retrain import RetrainSettings, epoch_size, mix_epoch

    pool, _ = semeion
    learn = stratified_sample(pool, 100, seed=0)
    s = RetrainSettings()
    size = epoch_size(len(learn), s)
    alone = mix_epoch(learn, None, s.feedback_share, 0, size)
    replay = stratified_sample(pool, 60, seed=1)
    mixed = mix_epoch(learn, replay, 0.5, 0, 200)
    assert len(alone) == size  # same number of steps as with replay
    assert len(mixed) == 200
    assert np.bincount(alone.y, minlength=10).min() >= size // 10 - 40


@pytest.mark.slow
def test_cli_errors(small_run, tmp_path, capsys):
    from train.retrain import main

    # No such base run: 6 (run directory or bundle missing), the one table's code.
    assert main(["--base", str(tmp_path / "nope"), "--feedback", str(tmp_path), "--target", "rpi"]) == 6
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


# -- stored frames -> model inputs: the device's preprocessing, from the manifest ----------------
def _digit_manifest() -> Manifest:
    """What ``train.export`` writes for an MNIST LeNet-5: grey 28x28, light ink on dark, digit mode."""
    return Manifest(name="digits", version="1", created="2025-01-01T00:00:00+00:00", target="rpi", sha256="0" * 64,
                    size_bytes=0, input=InputSpec(shape=[1, 28, 28, 1], dtype="int8", colour="grey",
                                                  quantization={"scale": 1.0, "zero_point": -128},
                                                  polarity="light_on_dark", preprocess="digit"),
                    output=OutputSpec(shape=[1, 10], dtype="float32"), labels=LABELS)


def _paper(digit: str, x: int) -> np.ndarray:
    """A 160x120 BGR camera frame: a dark digit on light paper at column ``x``, and a large dark smudge
    on the right-hand edge (outside the region of interest [0, 0, 0.6, 1])."""
    frame = np.full((120, 160, 3), 210, np.uint8)
    cv2.putText(frame, digit, (x, 80), cv2.FONT_HERSHEY_SIMPLEX, 2.0, (40, 40, 40), 5)
    cv2.rectangle(frame, (112, 20), (150, 100), (30, 30, 30), -1)
    return frame


def _store_sample(store, i: int, frame: np.ndarray, label: str, model_input: np.ndarray | None = None,
                  region: dict | None = None, frame_id: int | None = None) -> int:
    png = cv2.imencode(".png", frame)[1].tobytes()
    mi = None
    if model_input is not None:  # grey: a standard PNG is the array as it is
        mi = messages.image_field(cv2.imencode(".png", model_input)[1].tobytes(), "png", model_input.shape[1],
                                  model_input.shape[0], colour="grey")
    msg = messages.sample(
        device="cam1", seq=i, run_id="r1", ts=1795318626.0 + i, frame_id=i if frame_id is None else frame_id,
        model={"name": "digits", "version": "1", "sha256": "ab" * 32}, reasons=["low_confidence"],
        top_k=[{"label": label, "index": int(label), "score": 0.4}], scores=[0.1] * 10,
        stats={"confidence": 0.4, "margin": 0.1, "entropy": 0.8}, image=png, image_format="png",
        width=frame.shape[1], height=frame.shape[0], model_input=mi, region=region)
    sid = store.add(msg)
    assert sid is not None, "stored as a duplicate"
    store.set_label(sid, label)
    return sid


def test_stored_frames_go_through_the_bundles_preprocessing(tmp_path):
    """A frame without a model input (or with one of another shape) is preprocessed as the device did:
    region of interest (from the device config), digit mode and polarity (from the manifest); a model
    input of the right shape is the training image as it is."""
    from train.loop.retrain import load_feedback
    from train.loop.store import FeedbackStore

    frames = [_paper("3", 10), _paper("7", 25), _paper("1", 40)]
    sent = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    with FeedbackStore(tmp_path / "fb", labels=LABELS, dedup_distance=-1) as store:
        _store_sample(store, 0, frames[0], "3")                                                 # no model input
        _store_sample(store, 1, frames[1], "7", model_input=np.zeros((14, 14), np.uint8))   # another shape
        _store_sample(store, 2, frames[2], "1", model_input=sent)                              # the right shape
    manifest, roi = _digit_manifest(), PreprocessSettings(roi=[0.0, 0.0, 0.6, 1.0])
    ds = load_feedback(tmp_path / "fb", LABELS, (28, 28, 1), manifest=manifest, preprocess=roi)

    device = Preprocessor(manifest.input, {"shape": [1, 28, 28, 1], "dtype": np.int8, "quantization": (1.0, -128)},
                          roi=roi.roi)
    assert ds.x.shape == (3, 28, 28, 1) and list(ds.y) == [3, 7, 1]
    for got, frame in zip(ds.x[:2], frames[:2]):
        want = device.image(frame)
        assert np.array_equal(got[..., 0], want)
        assert want.mean() < 60 and want.max() > 200  # light digit on a dark ground, as MNIST
    assert np.array_equal(ds.x[2, ..., 0], sent)
    # Without the ROI the digit finder takes the smudge: the ROI of the device config did matter.
    whole = Preprocessor(manifest.input, {"shape": [1, 28, 28, 1], "dtype": np.int8, "quantization": (1.0, -128)})
    assert not np.array_equal(ds.x[0, ..., 0], whole.image(frames[0]))


def _two_digits() -> np.ndarray:
    """A 120x200 BGR frame: a "3" on the left, a "7" in the middle, a dark smudge on the right edge."""
    frame = np.full((120, 200, 3), 210, np.uint8)
    cv2.putText(frame, "3", (15, 80), cv2.FONT_HERSHEY_SIMPLEX, 2.0, (40, 40, 40), 5)
    cv2.putText(frame, "7", (105, 80), cv2.FONT_HERSHEY_SIMPLEX, 2.0, (40, 40, 40), 5)
    cv2.rectangle(frame, (175, 20), (195, 100), (30, 30, 30), -1)
    return frame


def test_a_region_samples_frame_is_cropped_to_its_box(tmp_path, caplog):
    """Two regions of one frame, without a usable model input: each frame is cropped to its own
    region's pixel box before the device's preprocessing; the device config's ROI does not apply to
    them. A box that does not fit the stored frame leaves its sample out, with a warning."""
    import logging

    from train.loop.retrain import frame_preprocessor, load_feedback
    from train.loop.store import FeedbackStore

    frame = _two_digits()
    left, right = [0, 0, 80, 120], [90, 0, 80, 120]
    with FeedbackStore(tmp_path / "fb", labels=LABELS, dedup_distance=-1) as store:
        a = _store_sample(store, 0, frame, "3", region={"name": "left", "box": left})
        b = _store_sample(store, 0, frame, "7", model_input=np.zeros((14, 14), np.uint8),  # another shape
                          region={"name": "right", "box": right})
        _store_sample(store, 0, frame, "1", region={"name": "far", "box": [150, 0, 100, 120]})
    manifest, config = _digit_manifest(), PreprocessSettings(roi=[0.5, 0.0, 0.5, 1.0])
    caplog.set_level(logging.WARNING, logger="train.loop.retrain")
    ds = load_feedback(tmp_path / "fb", LABELS, (28, 28, 1), manifest=manifest, preprocess=config)
    assert list(ds.ids) == [a, b] and list(ds.y) == [3, 7]
    assert "sample 3 left out: region 'far' box [150, 0, 100, 120] reaches outside its 200x120 frame" in caplog.text

    detail = {"shape": [1, 28, 28, 1], "dtype": np.int8, "quantization": (1.0, -128)}
    for got, box in zip(ds.x, (left, right)):
        want = Preprocessor(manifest.input, detail, roi=box).image(frame)
        assert np.array_equal(got[..., 0], want)
        assert want.mean() < 60 and want.max() > 200
    assert not np.array_equal(ds.x[0], ds.x[1])
    by_config = Preprocessor(manifest.input, detail, roi=config.roi).image(frame)  # would find the "7" or the smudge
    assert not np.array_equal(ds.x[0, ..., 0], by_config)

    # A region the device config names is fitted with that region's resize mode.
    regions = PreprocessSettings(regions={"left": {"roi": [0.0, 0.0, 0.4, 1.0], "resize": "letterbox"}},
                                 resize="centre_crop")
    pre = frame_preprocessor((28, 28, 1), None, regions, box=left, region="left")
    assert pre.roi == (0, 0, 80, 120) and pre.resize_mode == "letterbox"
    assert frame_preprocessor((28, 28, 1), None, regions, box=right, region="right").resize_mode == "centre_crop"

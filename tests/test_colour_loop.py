"""The feedback loop in colour, on real parts (issue 12, "close the loop in colour"), at a small size.

A LeNet-5 trained here on 4,000 real CIFAR-10 training photos and exported to full INT8 (version 1)
meets a "new camera" (:func:`train.data.camera.new_camera`: a colour cast, blur, sensor noise and
low-quality JPEG). The device (the real ``sdk.run`` pipeline, real LiteRT, an MJPG video decoded by
OpenCV, a real mosquitto) is shown shifted CIFAR *training-split* photos its model never trained on
(the run's validation split), in a region of a cluttered scene; its unsure regions reach a real
``train.loop.collect.Collector`` and a ``FeedbackStore``; a scripted labeller labels at most 300 of
them with the ground truth through the store's API; ``train.loop.retrain.retrain`` fine-tunes with
replay and exports version 2. Both INT8 bundles are then judged with ``sdk.batch.predict_batch`` on
the CIFAR-10 *test* photos: under the new camera (held out: never sampled, labelled or trained on)
and clean.

Measured at this size (2-core machine under load, about 60-70 s; the device sends every one of
the 360 frames, as this weak model is unsure of nearly all of them, and the oldest 300 are
labelled): INT8 shifted test accuracy 15.2% -> 36.2% (+21.0 pt) and 15.1% -> 38.0% (+22.9 pt,
training seed 7); clean 40.7% -> 46.0% and 39.8% -> 42.8% (the fine-tune with replay also trains
the small base model further). Feedback from the old camera (unshifted photos) gives +1.5 pt;
fine-tuning without replay drops the clean accuracy by 23 pt. The test asserts a rise of >= 10 pt
(the issue asks >= 5 pt) and a clean drop of <= 2 pt: the issue's 0.5 pt bound on the clean test
belongs to the full-size benchmark (``benchmarks/bench_colour_loop.py``), where the base model is
trained to convergence.

Publishing the new bundle to the running device is left out here: ``tests/test_feedback_loop.py``
covers ``train.loop.publish`` and the device's swap on the same loop in grey.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

import sdk
from mqtt_fixtures import mosquitto  # noqa: F401  (fixture)
from sdk.batch import predict_batch
from sdk.config import Config
from sdk.runtime import load_bundle
from train.data import stratified_sample
from train.data.camera import new_camera
from train.data.videos import write_region_video

pytestmark = pytest.mark.slow
DEVICE = "shop-cam"
BOX = (64, 96, 128, 128)  # the region the photos appear in: a whole-number scale (4x) of 32x32
N_FRAMES = 360            # shifted training-split photos shown to the device
LABEL_BUDGET = 300        # at most this many samples are labelled
CAMERA_SEED = 1           # the new camera (the same one for the video and the held-out test photos)


def int8_accuracy(bundle, x: np.ndarray, y: np.ndarray) -> float:
    """The bundle's INT8 model on bare 32x32 photos, as the device's interpreter runs it."""
    b = load_bundle(bundle)
    pred = predict_batch(b.interpreter, x, normalization=b.manifest.input.normalization).argmax(1)
    return float(np.mean(pred == y))


@pytest.fixture(scope="module")
def base(shared_data, tmp_path_factory):
    """Version 1: a LeNet-5 on 4,000 CIFAR-10 training photos (RGB), 4 epochs, full INT8 for a Pi;
    and the run's splits (validation: training-split photos it never trained on; test: CIFAR test)."""
    from train.config import TrainConfig
    from train.export import export_bundle
    from train.fit import run_training
    from train.runs import load_run

    data = shared_data / "cifar10-jpeg" / "cifar10-jpeg.zip"
    if not data.is_file():
        pytest.fail(f"test data missing: {data}")
    d = tmp_path_factory.mktemp("colour-loop")
    run = run_training(TrainConfig(
        model="lenet5", data=str(data), colour="rgb", train_limit=4000, epochs=4, batch_size=64,
        lr_schedule="none", early_stopping_patience=0, runs_dir=str(d / "runs"), run_name="cifar-lenet",
        tensorboard=False, verbose=0), evaluate=False)
    v1 = export_bundle("rpi", run, d / "bundle-v1", name="cifar", version="1", calibration_samples=200,
                       max_accuracy_drop=100, latency_runs=5).bundle_dir
    return run, v1, load_run(run).splits()


def test_shifted_camera_frames_to_labels_to_a_retrained_colour_model(base, mosquitto, tmp_path):  # noqa: F811
    from train.loop.collect import Collector
    from train.loop.retrain import RetrainSettings, retrain
    from train.loop.store import FeedbackStore

    run, v1, splits = base
    val, test = splits["val"], splits["test"]

    # The new camera: shifted training-split photos in a region of the scene (the device's video),
    # shifted test photos held out to judge on.
    rng = np.random.default_rng(0)
    seen = stratified_sample(val, N_FRAMES, seed=0)
    seen = seen.subset(rng.permutation(len(seen)))  # the camera meets the classes in no order
    seen_x = new_camera(seen.x, seed=CAMERA_SEED)
    video = write_region_video(tmp_path / "shop.avi", {"shelf": (BOX, seen_x)}, quality=100,
                               clutter=new_camera(val.x[rng.choice(len(val), 200, replace=False)], seed=CAMERA_SEED))
    held_out_x = new_camera(test.x, seed=CAMERA_SEED)

    # 1. The device meets the new camera; its unsure regions reach the collector.
    store = FeedbackStore(tmp_path / "feedback")
    sampling = {"enabled": True, "min_confidence": 0.9, "min_margin": 0.5, "max_entropy": 0.3, "audit_fraction": 0.1,
                "per_minute": 100000, "per_hour": 100000, "dedup_distance": 0, "image_format": "png"}
    cfg = Config(device_id=DEVICE, source=f"video:{video}", model=str(v1), top_k=3,
                 preprocess={"regions": {"shelf": {"roi": list(BOX)}}}, sampling=sampling,
                 mqtt={"broker": mosquitto.address, "outbox_path": str(tmp_path / "outbox.sqlite"),
                       "reconnect_min_s": 0.2},
                 update={"enabled": False})
    with Collector(store, "127.0.0.1", mosquitto.port, client_id="collector-colour") as collector:
        assert collector.wait_subscribed(10)
        stats = sdk.run(cfg)
        assert stats.frames == N_FRAMES and stats.samples >= 100, stats
        assert collector.wait_for(stats.samples, timeout=30), collector.summary()
        assert collector.stored + collector.duplicates == stats.samples and collector.invalid == 0, collector.summary()

    # 2. A scripted labeller labels (at most LABEL_BUDGET of) them with the ground truth.
    to_label = store.pending(limit=LABEL_BUDGET)  # the oldest first
    assert len(to_label) >= 100
    for s in to_label:
        assert s.device == DEVICE and s.model_version == "1" and s.region == "shelf"
        # what the model saw is the shifted photo back (MJPG and the resize move pixels a little)
        assert np.abs(s.model_input().astype(int) - seen_x[s.frame_id]).mean() < 6, s.id
        store.set_label(s.id, seen.class_names[seen.y[s.frame_id]], by="ground-truth")
    labels_used = store.counts()["labelled"]
    assert labels_used == len(to_label) <= LABEL_BUDGET

    # 3. Retrain with replay (all the labels go to learning: the judge is the held-out test photos).
    res = retrain(run, tmp_path / "feedback", bundle=v1, version="2", out_dir=tmp_path / "runs",
                  settings=RetrainSettings(holdout=0), max_forgetting=2.0,
                  export_kwargs={"latency_runs": 5, "calibration_samples": 200, "max_accuracy_drop": 100})
    print(json.dumps({k: res.report[k] for k in ("before", "after", "feedback_counts", "settings")}))
    assert res.report["feedback_counts"]["learn"] == labels_used
    assert res.report["settings"]["replay"] > 0

    # 4. Both INT8 bundles on the held-out shifted test photos and on the clean test photos.
    shifted = {v: int8_accuracy(b, held_out_x, test.y) for v, b in (("1", v1), ("2", res.bundle))}
    clean = {v: int8_accuracy(b, test.x, test.y) for v, b in (("1", v1), ("2", res.bundle))}
    rise_pt, drop_pt = (shifted["2"] - shifted["1"]) * 100, (clean["1"] - clean["2"]) * 100
    print(json.dumps({"labels_used": labels_used, "samples": stats.samples, "shifted": shifted, "clean": clean,
                      "rise_pt": round(rise_pt, 2), "clean_drop_pt": round(drop_pt, 2)}))
    assert clean["1"] > 0.3, clean  # the base model learned something (chance is 0.10)
    assert rise_pt >= 10, (shifted, clean)
    assert drop_pt <= 2.0, (shifted, clean)

"""The whole feedback loop on real parts, end to end.

A LeNet-5 trained on MNIST runs on a device (the real ``sdk.run`` pipeline, the real LiteRT
interpreter, a real video decoded by OpenCV, a real mosquitto broker) that is shown digits from
another domain: the UCI Semeion digits (other writers, other scanner) drawn on paper. Its unsure
frames reach ``train.collect``; a scripted labeller gives them the ground truth; ``train.retrain``
fine-tunes with replay and exports; ``train.publish`` sends the new bundle over MQTT; the running
device swaps it in. Then the device's accuracy on held-out Semeion frames must be clearly higher,
and the MNIST 10k test accuracy may drop by at most 0.5 pt.
"""
from __future__ import annotations

import json
import threading

import numpy as np
import pytest

import sdk
from mqtt_fixtures import Collector, mosquitto  # noqa: F401  (fixture)
from sdk.config import Config
from train.data import load_dataset, stratified_sample, stratified_split
from train.data.videos import write_digit_video

pytestmark = pytest.mark.slow
DEVICE = "cam-7"


def _config(bundle, video, broker, tmp_path, name, **kw) -> Config:
    """The device trusts the fleet key ``tmp_path/keys/fleet.pub`` (made by the test)."""
    return Config(device_id=DEVICE, source=f"video:{video}", model=str(bundle),
                  mqtt={"broker": broker, "outbox_path": str(tmp_path / f"outbox-{name}.sqlite"), "reconnect_min_s": 0.2},
                  update={"store_dir": str(tmp_path / "device-models"), "public_key": str(tmp_path / "keys" / "fleet.pub")},
                  metrics_interval_s=1.0, **kw)


def _accuracy_by_version(results: list[dict], truth: np.ndarray) -> dict[str, tuple[float, int]]:
    by: dict[str, list[bool]] = {}
    for r in results:
        if r["top_k"]:
            by.setdefault(r["model"]["version"], []).append(r["top_k"][0]["label"] == str(truth[r["frame_id"] % len(truth)]))
    return {v: (float(np.mean(ok)), len(ok)) for v, ok in by.items()}


def test_uncertain_frames_to_labels_to_retrained_model_on_the_device(small_run, shared_data, mosquitto, tmp_path):
    from train.export import export_bundle
    from train.loop.collect import Collector as SampleCollector
    from train.loop.keys import generate_keypair
    from train.loop.publish import publish_bundle
    from train.loop.retrain import RetrainSettings, retrain
    from train.loop.store import FeedbackStore

    sign_key, _, _ = generate_keypair(tmp_path / "keys" / "fleet")  # as `python -m train.publish keygen` does

    # The model devices run today: version 1, exported for a Raspberry Pi.
    v1 = export_bundle("rpi", small_run, tmp_path / "bundle-v1", name="digits", version="1", latency_runs=20).bundle_dir

    # The shifted domain: Semeion digits on paper. One video to collect from, one held out to judge on.
    semeion = load_dataset(str(shared_data / "semeion" / "semeion.data"))
    parts = stratified_split(semeion, val_fraction=0.25, seed=0)
    seen, held_out = stratified_sample(parts["train"], 500, seed=0), stratified_sample(parts["val"], 200, seed=0)
    video_seen = write_digit_video(tmp_path / "seen.avi", seen.x[..., 0], seed=3)
    video_eval = write_digit_video(tmp_path / "eval.avi", held_out.x[..., 0], seed=4)

    # 1. The device meets the new domain; its unsure frames (and a random audit) reach the collector.
    store = FeedbackStore(tmp_path / "feedback")
    sampling = {"enabled": True, "min_confidence": 0.9, "min_margin": 0.5, "max_entropy": 0.3, "audit_fraction": 0.1,
                "per_minute": 100000, "per_hour": 100000, "dedup_distance": 0, "image_format": "png"}
    with SampleCollector(store, "127.0.0.1", mosquitto.port, client_id="collector-1") as collector:
        assert collector.wait_subscribed(10)
        stats = sdk.run(_config(v1, video_seen, mosquitto.address, tmp_path, "seen", sampling=sampling))
        assert stats.frames == len(seen) and stats.samples >= 100, stats
        assert collector.wait_for(stats.samples, timeout=30), collector.summary()
        # Every upload is accounted for: stored, or a near-duplicate (perceptual hash) of a stored one.
        assert collector.stored + collector.duplicates == stats.samples and collector.invalid == 0, collector.summary()
    pending = store.pending()
    assert len(pending) == collector.stored >= 100

    # 2. A scripted labeller gives each stored sample its ground truth (the frame it came from).
    for s in pending:
        assert s.device == DEVICE and s.model_version == "1" and s.reasons
        store.set_label(s.id, str(seen.y[s.frame_id]), by="ground-truth")
    assert store.counts()["labelled"] == len(pending)

    # 3. Retrain with replay; the new bundle keeps the name and target of version 1.
    res = retrain(small_run, tmp_path / "feedback", bundle=v1, version="2", out_dir=tmp_path / "runs",
                  settings=RetrainSettings(holdout=0.2), export_kwargs={"latency_runs": 20})
    report = res.report
    print(json.dumps({k: report[k] for k in ("before", "after", "forgetting_pt", "feedback_counts")}, indent=1))
    assert report["forgetting_on"] == "original_test" and report["forgetting_pt"] <= 0.5, report
    assert not res.failures, res.failures

    # 4. The device runs version 1 on the held-out video; version 2 is published while it runs.
    results = Collector(mosquitto.port, (f"edge/v1/{DEVICE}/result", f"edge/v1/{DEVICE}/model/state"))
    assert results.wait_subscribed(10)
    stop = threading.Event()
    out: dict = {}
    cfg = _config(v1, video_eval, mosquitto.address, tmp_path, "eval", loop=True, fps_cap=400,
                  sampling={"enabled": False})
    device = threading.Thread(target=lambda: out.setdefault("stats", sdk.run(cfg, stop)), daemon=True)
    device.start()
    try:
        def decoded():
            return [json.loads(p) for p in results.on("/result")]

        assert results.wait_for(lambda c: len(c.on("/result")) >= 2 * len(held_out), timeout=60)
        outcomes = publish_bundle(res.bundle, mosquitto.address, devices=[DEVICE], wait_s=60, sign_key=sign_key)
        assert [o.outcome for o in outcomes] == ["applied"], [o.line() for o in outcomes]
        assert results.wait_for(
            lambda c: sum(json.loads(p)["model"]["version"] == "2" for p in c.on("/result")) >= 2 * len(held_out),
            timeout=60)
    finally:
        stop.set()
        device.join(30)
        results.close()
    assert out["stats"].ended_by == "stopped"
    msgs = decoded()
    seqs = [m["seq"] for m in msgs]
    assert seqs == list(range(len(seqs))), "the swap lost or repeated a result"
    acc = _accuracy_by_version(msgs, held_out.y)
    print("device accuracy on held-out Semeion frames by model version:", acc)
    assert acc["2"][0] >= acc["1"][0] + 0.04, acc
    state = json.loads(results.on("/model/state")[-1])
    assert state["active"]["version"] == "2" and state["previous"]["version"] == "1"

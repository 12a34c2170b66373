"""Device pipeline end to end: real video (OpenCV), real LiteRT bundle, real mosquitto."""
from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

import sdk
from contract import validate
from mqtt_fixtures import Broker, Collector, free_port, mosquitto  # noqa: F401  (fixture)
from sdk.config import Config
from sdk.pipeline import Classifier, Pipeline, PipelineSettings
from sdk.runtime import load_bundle
from sdk.sources import LiveSource
from sdk.topics import Topics
from sdk.uncertainty import SamplingPolicy, measure, reasons_for
from sdk_bundle_fixture import load_mnist, sdk_bundle  # noqa: F401  (fixture)
from train.data.videos import paper_frame, write_digit_video

REPO = Path(__file__).resolve().parents[1]
DEVICE = "dev1"


@pytest.fixture(scope="session")
def mnist_test(mnist_dir):
    return load_mnist(mnist_dir, "test")


@pytest.fixture(scope="session")
def digit_video(tmp_path_factory, mnist_test):
    x, _ = mnist_test
    return write_digit_video(tmp_path_factory.mktemp("video") / "digits40.avi", x[:40], seed=11)


def frame_count(path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


def make_config(bundle, source, broker, tmp_path, **kw) -> Config:
    mqtt = {"broker": broker, "outbox_path": str(tmp_path / "outbox.sqlite"), "reconnect_min_s": 0.2,
            "reconnect_max_s": 1.0, **kw.pop("mqtt", {})}
    return Config(device_id=DEVICE, source=source, model=str(bundle), mqtt=mqtt,
                  sampling=kw.pop("sampling", {"enabled": False}), metrics_interval_s=kw.pop("metrics_interval_s", 0.5),
                  **kw)


def test_every_frame_result_arrives_and_validates(sdk_bundle, digit_video, mosquitto, tmp_path):
    n = frame_count(digit_video)
    col = Collector(mosquitto.port, ("edge/#",))
    assert col.wait_subscribed()
    stats = sdk.run(make_config(sdk_bundle, f"video:{digit_video}", mosquitto.address, tmp_path, top_k=3))
    assert stats.ended_by == "source_ended" and stats.frames == n == 40
    assert col.wait_for(lambda c: len(c.on("/result")) >= n and any(b'"stopped"' in p for p in c.on("/event")))
    results = validate("result", col.on(f"{DEVICE}/result"))
    assert sorted(r["seq"] for r in results) == list(range(n))
    assert sorted(r["frame_id"] for r in results) == list(range(n))
    r0 = results[0]
    assert r0["model"]["sha256"] == json.loads((sdk_bundle / "manifest.json").read_text())["sha256"]
    assert len(r0["top_k"]) == 3 and r0["top_k"][0]["score"] >= r0["top_k"][1]["score"]
    assert set(r0["latency_ms"]) >= {"preprocess", "inference", "total"}
    events = validate("event", col.on(f"{DEVICE}/event"))
    assert [e["event"] for e in events][0] == "started"
    assert {"source_ended", "stopped"} <= {e["event"] for e in events}
    metrics = validate("metrics", col.on(f"{DEVICE}/metrics"))
    assert metrics and metrics[-1]["frames"] == n
    status = [p for t, p, _ in col.messages if t == f"edge/v1/{DEVICE}/status"]
    assert status[0] == b"online" and status[-1] == b"offline"  # clean exit publishes offline
    col.close()


def test_mosquitto_sub_receives_results_from_the_cli(sdk_bundle, digit_video, mosquitto, tmp_path):
    n = frame_count(digit_video)
    sub = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(mosquitto.port), "-q", "1",
                            "-t", f"edge/v1/{DEVICE}/result", "-C", str(n), "-W", "60"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)  # let mosquitto_sub subscribe
    cli = subprocess.run([sys.executable, "-m", "sdk.cli", "--video", str(digit_video), "--model", str(sdk_bundle),
                          "--broker", mosquitto.address, "--device-id", DEVICE, "--top-k", "2",
                          "--outbox", str(tmp_path / "o.sqlite")],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    out, err = sub.communicate(timeout=60)
    assert sub.returncode == 0, err
    lines = out.strip().splitlines()
    results = validate("result", lines)
    assert sorted(r["seq"] for r in results) == list(range(n))
    assert all(len(r["top_k"]) == 2 for r in results)


def test_broker_killed_mid_stream_every_seq_arrives(sdk_bundle, mnist_test, tmp_path):
    x, _ = mnist_test
    video = write_digit_video(tmp_path / "v.avi", x[100:220], seed=5)
    broker = Broker(tmp_path / "broker", persistent=True).start()
    col = Collector(broker.port, (f"edge/v1/{DEVICE}/result",), client_id="sf-collector", persistent_session=True)
    assert col.wait_subscribed()
    cfg = make_config(sdk_bundle, f"video:{video}", broker.address, tmp_path, fps_cap=30)
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("stats", sdk.run(cfg)))
    t.start()
    try:
        assert col.wait_for(lambda c: len(c.on("/result")) >= 20)
        broker.kill()  # SIGKILL mid-stream
        killed_at = len(col.on("/result"))
        time.sleep(1.2)  # the device keeps classifying; results queue on disk
        broker.start()
        t.join(60)
        assert not t.is_alive()
        stats = out["stats"]
        assert stats.published == 120
        assert col.wait_for(lambda c: {json.loads(p)["seq"] for p in c.on("/result")} >= set(range(120)), 30)
    finally:
        col.close()
        broker.stop()
    seqs = [json.loads(p)["seq"] for p in col.on("/result")]
    assert killed_at < 120
    first = sorted({s: i for i, s in reversed(list(enumerate(seqs)))}.items(), key=lambda kv: kv[1])
    assert [s for s, _ in first] == list(range(120)), "results must first arrive in seq order"


def _outbox_rows(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
    except sqlite3.OperationalError:  # the table is not created yet
        return 0
    finally:
        db.close()


def _outbox_results(path: Path) -> list[dict]:
    """The result messages queued in an outbox file, in queue order."""
    db = sqlite3.connect(path)
    try:
        rows = db.execute("SELECT topic, payload FROM outbox ORDER BY id").fetchall()
    finally:
        db.close()
    return [json.loads(p) for t, p in rows if t.endswith("/result")]


def _device_args(bundle, video, port, outbox, *extra) -> list[str]:
    return [sys.executable, "-m", "sdk.cli", "--video", str(video), "--model", str(bundle), "--broker",
            f"127.0.0.1:{port}", "--device-id", DEVICE, "--outbox", str(outbox), "--no-update", *extra]


def _summary(stderr: str) -> dict:
    """The JSON summary edge-classify prints last."""
    return json.loads(stderr.strip().splitlines()[-1])


def _first_run(col: Collector, run_id: str) -> list[int]:
    return [r["seq"] for r in validate("result", col.on("/result")) if r["run_id"] == run_id]


def _wait(pred, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end and not pred():
        time.sleep(0.05)


def _signal_when(args: list[str], ready, sig: int) -> tuple[int, str]:
    """Start the device, call ``ready()`` (it waits for the moment), send ``sig``; (exit code, stderr)."""
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, err


def test_sigterm_with_the_broker_down_keeps_the_queue_and_the_next_start_delivers_it(sdk_bundle, digit_video,
                                                                                     tmp_path):
    """Every result the first run counted (its summary line) arrives after the restart, in order,
    exactly once; the summary says they were queued, not delivered, and where they wait."""
    port = free_port()  # nothing listens there yet: the broker is down
    outbox = tmp_path / "outbox.sqlite"
    quick = tmp_path / "quick-exit.yaml"  # no broker will come: wait 1 s for it at exit, not the default 5
    quick.write_text("mqtt: {flush_timeout_s: 1}\n")
    code, err = _signal_when(_device_args(sdk_bundle, digit_video, port, outbox, "--loop", "--fps-cap", "40",
                                          "--config", str(quick)),
                             lambda: _wait(lambda: outbox.exists() and _outbox_rows(outbox) >= 30), signal.SIGTERM)
    assert code == 0, err
    first = _summary(err)
    queued = _outbox_results(outbox)
    assert first["results"] == len(queued) >= 30, first
    assert first["delivered"] == 0 and first["undelivered"] == first["queued"] == _outbox_rows(outbox), first
    assert first["outbox"] == str(outbox)
    assert f"{first['undelivered']} messages undelivered" in err and f"kept in {outbox}" in err, err
    assert f"127.0.0.1:{port} was never reached" in err
    run_id = queued[0]["run_id"]

    broker = Broker(tmp_path / "broker", port=port).start()
    col = Collector(port, (f"edge/v1/{DEVICE}/#",))
    assert col.wait_subscribed()
    try:
        rc = subprocess.run(_device_args(sdk_bundle, digit_video, port, outbox, "--max-frames", "1"), cwd=REPO,
                            capture_output=True, text=True, timeout=60)
        assert rc.returncode == 0, rc.stderr
        second = _summary(rc.stderr)
        assert second["undelivered"] == 0 and second["delivered"] == first["queued"] + second["queued"], second
        assert _outbox_rows(outbox) == 0
        col.wait_for(lambda c: len(_first_run(c, run_id)) >= first["results"], 10)
        assert _first_run(col, run_id) == list(range(first["results"]))  # all, in order, once
        assert any(json.loads(p)["event"] == "stopped" and json.loads(p)["detail"]["reason"] == "stopped"
                   for p in col.on("/event"))
    finally:
        col.close()
        broker.stop()


def test_sigterm_with_messages_in_flight_delivers_everything_before_exiting(sdk_bundle, digit_video, mosquitto,
                                                                            tmp_path):
    col = Collector(mosquitto.port, (f"edge/v1/{DEVICE}/result",))
    assert col.wait_subscribed()
    outbox = tmp_path / "outbox.sqlite"
    # no fps cap: results stream out as fast as it classifies
    code, err = _signal_when(_device_args(sdk_bundle, digit_video, mosquitto.port, outbox, "--loop"),
                             lambda: _wait(lambda: len(col.on("/result")) >= 100), signal.SIGTERM)
    assert code == 0, err
    summary = _summary(err)
    assert summary["undelivered"] == 0 and summary["delivered"] == summary["queued"] > summary["results"], summary
    assert "undelivered" not in err.rsplit("\n", 2)[0]  # no warning: everything went out
    col.wait_for(lambda c: len(c.on("/result")) >= summary["results"], 10)
    seqs = [r["seq"] for r in validate("result", col.on("/result"))]
    assert seqs == list(range(summary["results"]))  # every result it counted, in order, once
    col.close()


def test_sigkill_with_the_outbox_on_disk_redelivers_every_queued_result(sdk_bundle, digit_video, mosquitto,
                                                                       tmp_path):
    """SIGKILL of the device (no flush, no summary) while up to 64 results are in flight to a broker
    that hangs, then the broker crashes too, so what was in flight never arrived: every result in the
    outbox at the kill arrives after the next start. Delivery is at-least-once: de-duplicating by
    (run_id, seq) leaves each result exactly once, first arrivals in seq order."""
    col = Collector(mosquitto.port, (f"edge/v1/{DEVICE}/result",))
    assert col.wait_subscribed()
    outbox = tmp_path / "outbox.sqlite"
    def ready():
        _wait(lambda: len(col.on("/result")) >= 100)
        mosquitto.freeze()  # PUBLISHes now sit in flight, unacknowledged; the device keeps queueing
        _wait(lambda: _outbox_rows(outbox) >= 150, 30)

    code, _ = _signal_when(_device_args(sdk_bundle, digit_video, mosquitto.port, outbox, "--loop"), ready,
                           signal.SIGKILL)
    assert code == -signal.SIGKILL
    mosquitto.kill()  # what was in flight dies with it
    before = validate("result", col.on("/result"))
    run_id = before[0]["run_id"]
    in_outbox = [r["seq"] for r in _outbox_results(outbox)]
    assert in_outbox == sorted(in_outbox) and len(in_outbox) >= 100
    made = max([r["seq"] for r in before] + in_outbox) + 1
    # nothing fell between the two: every result it made was delivered or is still queued
    assert {r["seq"] for r in before} | set(in_outbox) == set(range(made))

    mosquitto.start()  # same port, empty
    _wait(lambda: not col.connected.is_set(), 5)
    assert col.wait_subscribed(20)
    rc = subprocess.run(_device_args(sdk_bundle, digit_video, mosquitto.port, outbox, "--max-frames", "1"),
                        cwd=REPO, capture_output=True, text=True, timeout=60)
    assert rc.returncode == 0, rc.stderr
    assert _summary(rc.stderr)["undelivered"] == 0 and _outbox_rows(outbox) == 0
    col.wait_for(lambda c: set(in_outbox) <= set(_first_run(c, run_id)), 10)
    after = _first_run(col, run_id)[len(before):]
    assert set(in_outbox) <= set(after)  # every queued result arrived after the restart
    seqs = _first_run(col, run_id)
    unique = list(dict.fromkeys(seqs))  # de-duplicated by (run_id, seq), first arrivals kept
    assert unique == list(range(made)), "a result was lost or first arrived out of order"
    assert len(seqs) - len(unique) == len(set(in_outbox) & {r["seq"] for r in before})  # duplicates: only those
    col.close()


def mixed_frames(x, rng, n_clear=20, n_mixed=8):
    """Clear digits and two digits blended into one (the model cannot be sure of those)."""
    frames = [paper_frame(x[i], rng) for i in range(n_clear)]
    for i in range(n_mixed):
        blend = np.maximum(x[200 + i], x[300 + i])
        frames.append(paper_frame(blend, rng))
    order = rng.permutation(len(frames))
    return [frames[i] for i in order]


def test_samples_selected_for_unsure_frames_only(sdk_bundle, mnist_test, mosquitto, tmp_path):
    x, _ = mnist_test
    rng = np.random.default_rng(3)
    w = cv2.VideoWriter(str(tmp_path / "m.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (640, 480))
    for f in mixed_frames(x, rng):
        w.write(f)
    w.release()
    policy = {"enabled": True, "min_confidence": 0.9, "min_margin": 0.6, "max_entropy": 0.35,
              "per_minute": 1000, "per_hour": 1000, "dedup_distance": 0, "max_bytes": 20000, "image_format": "jpeg"}
    col = Collector(mosquitto.port, (f"edge/v1/{DEVICE}/#",))
    assert col.wait_subscribed()
    stats = sdk.run(make_config(sdk_bundle, f"video:{tmp_path / 'm.avi'}", mosquitto.address, tmp_path,
                                top_k=10, sampling=policy))
    assert col.wait_for(lambda c: len(c.on("/result")) >= stats.frames and len(c.on("/sample")) >= stats.samples)
    results = validate("result", col.on("/result"))
    samples = validate("sample", col.on("/sample"))
    pol = SamplingPolicy(**{k: v for k, v in policy.items() if k in SamplingPolicy.__dataclass_fields__})
    unsure = {}
    for r in results:
        probs = np.zeros(10)
        for c in r["top_k"]:
            probs[c["index"]] = c["score"]
        reasons = reasons_for(measure(probs), pol)
        if reasons:
            unsure[r["frame_id"]] = reasons
    assert 0 < len(unsure) < len(results), "the video must hold both sure and unsure frames"
    assert {s["frame_id"]: s["reasons"] for s in samples} == unsure
    for s in samples:
        assert s["image"]["bytes"] <= 20000
        import base64

        img = cv2.imdecode(np.frombuffer(base64.b64decode(s["image"]["data"]), np.uint8), cv2.IMREAD_COLOR)
        assert img.shape[:2] == (s["image"]["height"], s["image"]["width"])
        assert max(img.shape[:2]) <= 320
        mi = cv2.imdecode(np.frombuffer(base64.b64decode(s["model_input"]["data"]), np.uint8), cv2.IMREAD_GRAYSCALE)
        assert mi.shape == (28, 28)
    metrics = validate("metrics", col.on("/metrics"))
    assert metrics[-1]["samples"] == len(samples) and metrics[-1]["samples_duplicate"] == 0
    col.close()


def test_publish_on_change_only(sdk_bundle, mnist_test, mosquitto, tmp_path):
    x, y = mnist_test
    idx = [i for i in range(len(y)) if y[i] == 1][:5] + [i for i in range(len(y)) if y[i] == 0][:5]
    video = write_digit_video(tmp_path / "c.avi", x[idx], seed=2)
    col = Collector(mosquitto.port, (f"edge/v1/{DEVICE}/result",))
    assert col.wait_subscribed()
    stats = sdk.run(make_config(sdk_bundle, f"video:{video}", mosquitto.address, tmp_path, publish={"mode": "change"}))
    assert stats.frames == 10
    assert col.wait_for(lambda c: len(c.on("/result")) >= stats.published)
    labels = [r["top_k"][0]["label"] for r in validate("result", col.on("/result"))]
    assert labels == ["1", "0"] and stats.published == 2
    col.close()


def test_loop_flag_restarts_video(sdk_bundle, digit_video, tmp_path):
    stats = sdk.run(Config(device_id=DEVICE, source=f"video:{digit_video}", model=str(sdk_bundle), loop=True,
                           max_frames=100, mqtt={"enabled": False}, sampling={"enabled": False}))
    assert stats.frames == 100 and stats.ended_by == "max_frames"


def test_live_source_reconnects_and_reports_it(sdk_bundle, digit_video, mosquitto, tmp_path):
    """A stream that drops (a video file read as a live source ends) is reopened with backoff;
    stale frames are dropped and counted; the disconnect and reconnect are published."""
    bundle = load_bundle(sdk_bundle)
    opened = []

    def opener():
        opened.append(time.monotonic())
        return cv2.VideoCapture(str(digit_video))

    topics = Topics(DEVICE)
    col = Collector(mosquitto.port, (f"edge/v1/{DEVICE}/#",))
    assert col.wait_subscribed()
    from sdk.mqtt import MqttPublisher

    with LiveSource(opener, "test-stream", fps_cap=50, backoff_min_s=0.1, backoff_max_s=0.4) as src, \
            MqttPublisher("127.0.0.1", mosquitto.port, "live", status_topic=topics.status) as pub:
        stats = Pipeline(src, Classifier(bundle), pub, topics,
                         PipelineSettings(max_frames=60, metrics_interval_s=0.2)).run()
        assert pub.flush(10)
    assert len(opened) >= 2 and src.reconnects >= 1
    assert stats.dropped_frames > 0
    assert col.wait_for(lambda c: any(b"source_reconnected" in p for p in c.on("/event")))
    events = validate("event", col.on("/event"))
    kinds = [e["event"] for e in events]
    assert "source_disconnected" in kinds and "source_reconnected" in kinds
    assert validate("metrics", col.on("/metrics"))[-1]["dropped_frames"] > 0
    col.close()

"""Host side of the feedback loop on real parts: mosquitto, paho, sqlite, real MNIST digits.

Samples are built with ``sdk.messages.sample`` and published through the device's own
transport (``sdk.mqtt.MqttPublisher``, QoS 1), collected by ``train.collect``, labelled through
``train.label`` driven on stdin, and exported for ``train.data.load_dataset``.
"""
from __future__ import annotations

import base64
import io
import json
import logging
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import cv2
import jsonschema
import numpy as np
import pytest

from mqtt_fixtures import Broker, free_port, mosquitto  # noqa: F401  (fixture)
from sdk import messages
from sdk.mqtt import MqttPublisher
from sdk.topics import Topics
from sdk.uncertainty import hamming, phash
from train import collect, label
from train.data import load_dataset
from train.loop import label as label_mod
from train.loop.collect import Collector
from train.loop.store import FeedbackError, FeedbackStore

REPO = Path(__file__).resolve().parents[1]
LABELS = [str(i) for i in range(10)]
MODEL = {"name": "lenet5-mnist", "version": "3", "sha256": "ab" * 32}


@pytest.fixture(scope="module")
def digits(distinct_digits):
    return distinct_digits


def sample(digits, i: int, *, device: str = "cam1", run_id: str = "run1", seq: int | None = None,
           wrong: bool = False) -> dict:
    """A sample payload for digit ``i``; the model guesses right unless ``wrong``."""
    x, y = digits
    truth = int(y[i])
    guess = (truth + 1) % 10 if wrong else truth
    other = (guess + 3) % 10
    png = cv2.imencode(".png", x[i])[1].tobytes()
    return messages.sample(
        device=device, seq=i if seq is None else seq, run_id=run_id, ts=1795318626.0 + i, frame_id=i, model=MODEL,
        reasons=["low_confidence", "small_margin"],
        top_k=[{"label": str(guess), "index": guess, "score": 0.48},
               {"label": str(other), "index": other, "score": 0.41}],
        scores=[0.48 if k == guess else 0.41 if k == other else 0.11 / 8 for k in range(10)],
        stats={"confidence": 0.48, "margin": 0.07, "entropy": 0.55}, image=png, image_format="png",
        width=28, height=28, model_input=messages.image_field(png, "png", 28, 28, colour="grey"))


def key(msg: dict) -> tuple:
    return msg["device"], msg["run_id"], msg["seq"], msg["frame_id"]


def stored_keys(store: FeedbackStore) -> list[tuple]:
    return [tuple(r) for r in store._db.execute("SELECT device, run_id, seq, frame_id FROM samples")]


def publish(broker: Broker, msgs: list[dict]) -> None:
    """Through the device's transport, QoS 1; returns once the broker acknowledged every one."""
    with MqttPublisher("127.0.0.1", broker.port, client_id="test-device", reconnect_min_s=0.1) as pub:
        for m in msgs:
            pub.publish(Topics(m["device"]).sample, messages.encode(m), qos=1)
        assert pub.flush(15), "the broker did not acknowledge every sample"


def collector(store: FeedbackStore, broker: Broker, client_id: str, **kw) -> Collector:
    return Collector(store, "127.0.0.1", broker.port, client_id=client_id, reconnect_min_s=0.1, reconnect_max_s=0.5,
                     **kw)


# -- MQTT: persistent session, shared subscription, duplicates, invalid payloads --------------
def test_samples_sent_while_collector_down_arrive_after_restart(digits, tmp_path):
    broker = Broker(tmp_path / "broker", persistent=True).start()
    try:
        store = FeedbackStore(tmp_path / "fb")
        with collector(store, broker, "col-a") as col:  # first run: the broker learns the session
            assert col.wait_subscribed(10)
        msgs = [sample(digits, i) for i in range(10)]
        publish(broker, msgs)  # nobody is connected: queued for col-a's session
        broker.stop()  # and the broker restarts in between (sessions and queue persisted)
        broker.start()
        with collector(store, broker, "col-a") as col:
            assert col.wait_for(10, 20), col.summary()
            assert (col.stored, col.duplicates, col.invalid) == (10, 0, 0)
        assert sorted(stored_keys(store)) == sorted(key(m) for m in msgs)
        s = store.get(1)
        assert s.image_path.is_file() and s.input_path.is_file()
        assert np.array_equal(s.model_input(), digits[0][0])
        assert s.reasons == ["low_confidence", "small_margin"] and s.predicted == str(digits[1][0])
    finally:
        broker.stop()


def test_two_collectors_in_a_share_group_split_without_loss_or_duplicates(digits, mosquitto, tmp_path):
    stores = [FeedbackStore(tmp_path / f"fb{k}") for k in range(2)]
    cols = [collector(s, mosquitto, f"share-{k}", group="site-a").start() for k, s in enumerate(stores)]
    try:
        assert all(c.wait_subscribed(10) for c in cols)
        msgs = [sample(digits, i, device=f"cam{i % 2}") for i in range(40)]
        publish(mosquitto, msgs)
        end = time.monotonic() + 20
        while sum(c.handled for c in cols) < 40 and time.monotonic() < end:
            time.sleep(0.05)
    finally:
        for c in cols:
            c.stop()
    a, b = (set(stored_keys(s)) for s in stores)
    assert a and b, "both collectors should get a share"
    assert not a & b
    assert a | b == {key(m) for m in msgs}
    assert sum(c.duplicates + c.invalid for c in cols) == 0


def test_redelivered_and_repeated_payloads_are_stored_once(digits, mosquitto, tmp_path):
    store = FeedbackStore(tmp_path / "fb")
    first = sample(digits, 5)
    again_later = sample(digits, 5, run_id="run2", seq=0)  # the same frame from a restarted device
    jpeg = cv2.imencode(".jpg", digits[0][5], [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    near = sample(digits, 5, seq=99)  # re-encoded (JPEG): other bytes, same picture
    near["image"].update(format="jpeg", bytes=len(jpeg), data=base64.b64encode(jpeg).decode())
    with collector(store, mosquitto, "dups") as col:
        assert col.wait_subscribed(10)
        publish(mosquitto, [first, first, again_later, near, sample(digits, 6)])
        assert col.wait_for(5, 15), col.summary()
    assert (col.stored, col.duplicates) == (2, 3)
    assert store.counts()["total"] == 2 and len(list(store.images_dir.iterdir())) == 2


def test_invalid_payload_is_logged_acked_and_kept(digits, mosquitto, tmp_path, caplog):
    store = FeedbackStore(tmp_path / "fb")
    bad_reason = sample(digits, 1)
    bad_reason["reasons"] = ["sunspots"]
    spoofed = sample(digits, 2, device="cam2")  # published on cam1's topic
    truncated = sample(digits, 3)
    truncated["image"]["bytes"] += 1
    rejected = tmp_path / "fb" / "rejected"
    caplog.set_level(logging.WARNING, logger="train.loop.collect")
    with collector(store, mosquitto, "strict", rejected_dir=rejected) as col:
        assert col.wait_subscribed(10)
        publish(mosquitto, [bad_reason, sample(digits, 4)])
        with MqttPublisher("127.0.0.1", mosquitto.port, client_id="raw") as pub:
            pub.publish("edge/v1/cam1/sample", messages.encode(spoofed))
            pub.publish("edge/v1/cam1/sample", messages.encode(truncated))
            pub.publish("edge/v1/cam9/sample", b"\xff not json")
            assert pub.flush(10)
        assert col.wait_for(5, 15), col.summary()
    assert (col.stored, col.invalid) == (1, 4)
    log = caplog.text
    assert "rejected sample on edge/v1/cam1/sample (device cam1): invalid sample at $.reasons[0]" in log
    assert "'sunspots' is not one of" in log
    assert "$.device 'cam2' does not match the topic's device 'cam1'" in log
    assert "$.image.bytes" in log and "edge/v1/cam9/sample (device cam9)" in log
    assert len(list(rejected.glob("*.json"))) == 4
    # acknowledged: a restarted collector on the same session gets only what comes next
    with collector(store, mosquitto, "strict") as again:
        assert again.wait_subscribed(10)
        publish(mosquitto, [sample(digits, 7)])
        assert again.wait_for(1, 15)  # a redelivery would have come first
    assert (again.received, again.invalid, again.stored) == (1, 0, 1)


def test_collector_killed_mid_commit_loses_nothing(digits, mosquitto, tmp_path):
    """SIGKILL the CLI while it waits to commit (the test holds sqlite's write lock): what it had
    received but not committed is redelivered to the restarted collector, nothing is doubled;
    the restarted one stops cleanly on SIGTERM with a summary."""
    out = tmp_path / "fb"
    cmd = [sys.executable, "-m", "train.collect", "--broker", mosquitto.address, "--out", str(out),
           "--client-id", "crashy", "--timeout", "30"]
    log = open(tmp_path / "collector.log", "w")

    def sent_to_crashy() -> int:
        return mosquitto.log_text().count("Sending PUBLISH to crashy")

    def wait(pred, what: str, timeout: float = 15) -> None:
        end = time.monotonic() + timeout
        while not pred():
            assert time.monotonic() < end, f"timed out waiting for {what}\n{(tmp_path / 'collector.log').read_text()}"
            time.sleep(0.05)

    def rows() -> int:
        if not (out / "index.sqlite").exists():
            return 0
        db = sqlite3.connect(out / "index.sqlite")
        try:
            return db.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
        finally:
            db.close()

    msgs = [sample(digits, i) for i in range(12)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait(lambda: "Sending SUBACK to crashy" in mosquitto.log_text(), "the subscription")
        publish(mosquitto, msgs[:4])
        wait(lambda: rows() == 4, "the first 4 samples")
        lock = sqlite3.connect(out / "index.sqlite", isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")  # the collector's next commit blocks
        publish(mosquitto, msgs[4:8])
        wait(lambda: sent_to_crashy() == 8, "delivery of samples 5-8")
        time.sleep(0.3)
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
        lock.execute("ROLLBACK")
        lock.close()
        publish(mosquitto, msgs[8:])  # while it is down
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        wait(lambda: rows() == 12, "all 12 samples")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0, (tmp_path / "collector.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    store = FeedbackStore(out)
    assert sorted(stored_keys(store)) == sorted(key(m) for m in msgs)
    files = {p.name for p in store.images_dir.iterdir()} | {p.name for p in store.inputs_dir.iterdir()}
    assert files == {f"{i}.png" for i in range(1, 13)}
    assert "8 received, 8 stored, 0 duplicates" in (tmp_path / "collector.log").read_text()


@pytest.mark.parametrize("args, code, message", [
    (["--broker", "mqtt.local:port"], 9, "invalid broker port"),
    (["--broker", "127.0.0.1:1883", "--tls-ca", "/nonexistent/ca.pem"], 9, "TLS ca_certs file not found: /nonexistent"),
    (["--broker", "127.0.0.1:1883", "--group", "a/b"], 2, "invalid shared-subscription group 'a/b'"),
    (["--broker", "127.0.0.1:1883", "--out", "/proc/feedback"], 2, "--out /proc/feedback: cannot use it"),
])
def test_collect_cli_bad_flags(args, code, message, tmp_path, capsys):
    """Unusable MQTT settings exit 9 (as in edge-classify), other bad flags 2 (argparse)."""
    argv = ["--out", str(tmp_path / "fb")] + args
    try:
        got = collect.main(argv)
    except SystemExit as e:
        got = e.code
    assert got == code
    assert message in capsys.readouterr().err


def test_collect_timeout_exit_codes(mosquitto, tmp_path, capsys):
    """At --timeout: 12 when the broker was never reached, 5 when fewer than --max-messages came."""
    code = collect.main(["--broker", f"127.0.0.1:{free_port()}", "--out", str(tmp_path / "a"), "--timeout", "1", "-q"])
    assert code == 12 and "not reached in 1 s" in capsys.readouterr().err
    code = collect.main(["--broker", mosquitto.address, "--out", str(tmp_path / "b"), "--timeout", "1.5",
                         "--max-messages", "3", "-q"])
    assert code == 16 and "with 0 of 3 messages" in capsys.readouterr().err


# -- the store: disk bound, labels, CSV, export -----------------------------------------------
def test_disk_bound_evicts_oldest_pending_first(digits, tmp_path, caplog):
    store = FeedbackStore(tmp_path / "fb", labels=LABELS, max_samples=4)
    ids = [store.add(sample(digits, i)) for i in range(4)]
    store.set_label(ids[0], "7")
    store.skip(ids[2])
    assert store.add(sample(digits, 4)) == 5
    assert [s.id for s in store.pending()] == [4, 5] and store.evicted == 1  # 2 (oldest pending) went
    assert not (store.images_dir / "2.png").exists() and not (store.inputs_dir / "2.png").exists()
    store.add(sample(digits, 5))  # next: 3 (skipped) goes before the labelled 1
    assert [s.id for s in store.labelled()] == [1] and store.counts()["total"] == 4
    with pytest.raises(FeedbackError, match="no sample with id 3"):
        store.get(3)

    size = {i: 2 * len(cv2.imencode(".png", digits[0][i])[1]) for i in (10, 11, 12)}  # frame + model input
    bound = sum(size.values()) - 1
    small = FeedbackStore(tmp_path / "small", labels=LABELS, max_bytes=bound)
    for i in (10, 11):
        small.set_label(small.add(sample(digits, i)), "1")
    caplog.set_level(logging.WARNING, logger="train.loop.store")
    small.add(sample(digits, 12))
    assert "only labelled samples left" in caplog.text
    assert [s.id for s in small.labelled()] == [2] and [s.id for s in small.pending()] == [3]
    assert small.counts()["bytes"] == size[11] + size[12]
    assert FeedbackStore(tmp_path / "small").max_bytes == bound  # the bound is kept in the store


def test_invalid_payload_and_label_errors_name_the_field(digits, tmp_path):
    store = FeedbackStore(tmp_path / "fb")
    msg = sample(digits, 0)
    del msg["scores"]
    with pytest.raises(FeedbackError, match=r"invalid sample at \$: 'scores' is a required property"):
        store.add(msg)
    msg = sample(digits, 0)
    msg["image"]["data"] = "not base64!"
    with pytest.raises(FeedbackError, match=r"\$.image.data: not valid base64"):
        store.add(msg)
    assert store.invalid == 2
    new = store.add(sample(digits, 0))
    with pytest.raises(FeedbackError, match="unknown label 'seven'; valid: .*7"):
        store.set_label(new, "seven")


def test_label_cli_on_stdin(digits, tmp_path):
    store = FeedbackStore(tmp_path / "fb", labels=LABELS)
    y = [str(v) for v in digits[1]]
    for i in range(6):
        store.add(sample(digits, i, wrong=i in (1, 3)))
    wrong_4 = str((int(y[3]) + 5) % 10)
    keys = ["",          # 1: accept the (right) guess
            y[1],        # 2: correct the wrong guess
            "s",         # 3: skip
            wrong_4,     # 4: a wrong correction ...
            "u",         # ... undone: sample 4 is shown again
            "x",         # not a label: asked again
            y[3],        # 4: corrected
            "?", "",     # 5: help, then accept
            "q"]         # 6 stays pending
    run = subprocess.run([sys.executable, "-m", "train.label", str(tmp_path / "fb")], cwd=REPO, text=True,
                         input="\n".join(keys) + "\n", capture_output=True, timeout=60)
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert "[1/6] sample 1  device cam1  model lenet5-mnist v3" in out and "[6/6] sample 6" in out
    assert "█" in out and "model input (28x28)" in out
    assert f"model's guesses: {(int(y[1]) + 1) % 10} 0.48" in out
    assert "undone: sample 4 is pending again" in out and "unknown label 'x'" in out
    assert "4 labelled (2 accepted, 2 corrected), 1 skipped, 1 undone, 1 left pending" in out
    got = {s.id: (s.status, s.label) for s in [store.get(i) for i in range(1, 7)]}
    assert got == {1: ("labelled", y[0]), 2: ("labelled", y[1]), 3: ("skipped", None), 4: ("labelled", y[3]),
                   5: ("labelled", y[4]), 6: ("pending", None)}
    assert store._db.execute("SELECT labelled_by FROM samples WHERE id = 1").fetchone()[0] == "cli"

    summary = io.StringIO()
    assert label.main([str(tmp_path / "fb"), "--summary"], out=summary) == 0
    assert "6 samples" in summary.getvalue() and "1 pending, 4 labelled, 1 skipped" in summary.getvalue()


def test_csv_import_reports_bad_rows_and_applies_the_rest(digits, tmp_path):
    store = FeedbackStore(tmp_path / "fb", labels=LABELS)
    for i in range(4):
        store.add(sample(digits, i))
    by_id = tmp_path / "labels.csv"
    by_id.write_text("id,label\n1,3\n2,ten\n77,4\n3,5\n")
    out = io.StringIO()
    assert label.main([str(tmp_path / "fb"), "--import", str(by_id)], out=out) == 5  # input partly unusable
    text = out.getvalue()
    assert "2 labels applied, 2 rows left out" in text
    assert "labels.csv row 3: label 'ten' is not one of 0, 1, 2" in text
    assert "labels.csv row 4: unknown id '77'" in text
    assert [(s.id, s.label) for s in store.labelled()] == [(1, "3"), (3, "5")]

    by_image = tmp_path / "by_image.csv"
    by_image.write_text("image,label,note\nimages/4.png,9,from a path\n5.png,1,\n")
    report = store.import_labels_csv(by_image, by="bulk")
    assert report.applied == 1 and report.errors == ["by_image.csv row 3: unknown image '5.png'"]
    assert store.get(4).label == "9"
    (tmp_path / "nokey.csv").write_text("file,label\n1,2\n")
    with pytest.raises(FeedbackError, match=r"needs a header .* \(found: file, label\)"):
        store.import_labels_csv(tmp_path / "nokey.csv")


def test_export_folder_loads_with_load_dataset(digits, tmp_path):
    x, y = digits
    store = FeedbackStore(tmp_path / "fb")  # labels from what the devices' top_k named
    for i in range(30):
        store.add(sample(digits, i))
    for s in store.pending():
        if s.id <= 24:
            store.set_label(s.id, str(y[s.id - 1]), by="test")
    counts = store.export_folder(tmp_path / "export")
    assert sum(counts.values()) == 24
    names = (tmp_path / "export" / "labels.txt").read_text().splitlines()
    assert names == sorted(set(names), key=int)
    ds = load_dataset(str(tmp_path / "export"), class_names=names)
    assert ds.x.shape == (24, 28, 28, 1)
    for img, cls, rel in zip(ds.x, ds.y, ds.ids):
        sid = int(Path(rel).stem)
        assert names[cls] == str(y[sid - 1])
        assert np.array_equal(img[..., 0], x[sid - 1])  # the model input, pixel for pixel
    with pytest.raises(FeedbackError, match="not empty"):
        store.export_folder(tmp_path / "export")


def test_storage_error_is_retried_by_reconnecting_and_bad_numbers_are_invalid(digits, mosquitto, tmp_path):
    """A locked database (or a full disk) leaves the sample unacknowledged; the collector reconnects and
    the broker redelivers it. A number sqlite cannot hold is a bad payload: rejected once, acknowledged."""
    store = FeedbackStore(tmp_path / "fb", timeout=0.2)
    huge = sample(digits, 9, seq=2 ** 64)
    with collector(store, mosquitto, "retry") as col:
        col.retry_s = 0.5
        assert col.wait_subscribed(10)
        lock = sqlite3.connect(tmp_path / "fb" / "index.sqlite", isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")  # every commit of the collector now fails
        publish(mosquitto, [sample(digits, i) for i in range(3)])
        deadline = time.monotonic() + 10
        while col.errors == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert col.errors >= 1 and col.stored == 0
        lock.execute("ROLLBACK")
        lock.close()
        publish(mosquitto, [huge])
        deadline = time.monotonic() + 20
        while (col.stored < 3 or col.invalid < 1) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (col.stored, col.invalid) == (3, 1), col.summary()
    assert store.counts()["total"] == 3


# -- model inputs as standard images, regions, an old store --------------------------------------
def _colour_input(seed: int = 0) -> np.ndarray:
    """A 96x96 RGB model input whose channels differ everywhere (a swap cannot go unnoticed)."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    img[..., 0] = img[..., 0] // 2 + 128  # red always brighter than blue
    img[..., 2] = img[..., 2] // 2
    return img


def standard_file(img: np.ndarray, fmt: str = "png") -> bytes:
    """A model input (RGB or grey) as the wire format says: a standard PNG/JPEG file (BGR for OpenCV)."""
    bgr = cv2.cvtColor(img, cv2.COLOR_RGB2BGR) if img.ndim == 3 else img
    return cv2.imencode(".png" if fmt == "png" else ".jpg", bgr)[1].tobytes()


def frame_sample(frame: np.ndarray, *, seq: int = 0, frame_id: int = 0, run_id: str = "run1",
                 model_input: np.ndarray | None = None, fmt: str = "png", region: dict | None = None,
                 label: str = "3") -> dict:
    """A sample payload for a BGR ``frame``, with ``model_input`` (RGB or grey) as a standard image."""
    png = cv2.imencode(".png", frame)[1].tobytes()
    mi = None
    if model_input is not None:
        mi = messages.image_field(standard_file(model_input, fmt), fmt, model_input.shape[1], model_input.shape[0],
                                  colour="rgb" if model_input.ndim == 3 else "grey")
    return messages.sample(
        device="cam1", seq=seq, run_id=run_id, ts=1795318626.0 + seq, frame_id=frame_id, model=MODEL,
        reasons=["low_confidence"], top_k=[{"label": label, "index": int(label), "score": 0.4}],
        scores=[0.4 if k == int(label) else 0.6 / 9 for k in range(10)],
        stats={"confidence": 0.4, "margin": 0.1, "entropy": 0.8}, image=png, image_format="png",
        width=frame.shape[1], height=frame.shape[0], model_input=mi, region=region)


def _valid(msg: dict) -> dict:
    jsonschema.validate(msg, messages.load_schema("sample"))
    return msg


def test_colour_model_input_is_stored_and_exported_as_the_model_saw_it(tmp_path):
    """A colour model input read back is the RGB array the model saw; the exported file is a standard
    image, so load_dataset (BGR -> RGB on read) gives the same pixels."""
    rgb = _colour_input()
    frame = np.full((120, 160, 3), 90, np.uint8)
    store = FeedbackStore(tmp_path / "fb", labels=LABELS)
    sid = store.add(_valid(frame_sample(frame, model_input=rgb)))
    s = store.get(sid)
    assert s.input_path.name == f"{sid}.png" and s.input_colour == "rgb"
    assert np.array_equal(s.model_input(), rgb)
    assert np.array_equal(cv2.imread(str(s.input_path))[..., ::-1], rgb)  # a standard file: BGR for OpenCV
    store.set_label(sid, "3")
    assert store.export_folder(tmp_path / "export") == {"3": 1}
    ds = load_dataset(str(tmp_path / "export"), class_names=LABELS[3:4])
    assert ds.x.shape == (1, 96, 96, 3)
    assert np.array_equal(ds.x[0], rgb)


def test_jpeg_model_input_is_accepted(tmp_path):
    yy, xx = np.mgrid[0:96, 0:96]
    rgb = np.stack([160 + xx // 2, 2 * yy, 20 + xx // 4], axis=-1).astype(np.uint8)  # smooth, red > blue
    store = FeedbackStore(tmp_path / "fb")
    sid = store.add(_valid(frame_sample(np.full((60, 80, 3), 90, np.uint8), model_input=rgb, fmt="jpeg")))
    s = store.get(sid)
    assert s.input_path.name == f"{sid}.jpg"
    got = s.model_input()
    assert got.shape == (96, 96, 3)
    assert np.abs(got.astype(int) - rgb).mean() < 3  # lossy, but the channels are in RGB order
    assert (got[..., 0].astype(int) - got[..., 2]).mean() > 100


@pytest.mark.parametrize("change, message", [
    ({"width": 95}, r"\$.model_input.width/height: say 95x96 but the image is 96x96"),
    ({"colour": "grey"}, r"\$.model_input.colour: says grey but the image has 3 channel"),
    ({"bytes": 7}, r"\$.model_input.bytes: says 7 but the data holds"),
    ({"format": "jpeg"}, r"\$.model_input.format: says jpeg but the data is not a JPEG file"),
])
def test_model_input_not_matching_its_fields_is_refused(change, message, tmp_path):
    store = FeedbackStore(tmp_path / "fb")
    msg = frame_sample(np.full((60, 80, 3), 90, np.uint8), model_input=_colour_input())
    msg["model_input"].update(change)
    with pytest.raises(FeedbackError, match=message):
        store.add(msg)
    assert store.invalid == 1 and store.counts()["total"] == 0
    grey = frame_sample(np.full((60, 80, 3), 90, np.uint8), model_input=np.full((28, 28), 7, np.uint8))
    grey["model_input"]["colour"] = "rgb"
    with pytest.raises(FeedbackError, match=r"\$.model_input.colour: says rgb but the image has 1 channel"):
        store.add(grey)


def _two_digit_frame(left: str, right: str) -> np.ndarray:
    """A 240x320 BGR frame: a big static scene and two small 40x40 digit windows at (20, 20) and (260, 180)."""
    frame = np.zeros((240, 320, 3), np.uint8)
    cv2.rectangle(frame, (0, 0), (320, 120), (200, 160, 90), -1)
    cv2.circle(frame, (160, 150), 60, (40, 200, 240), -1)
    for (x, y), d in (((20, 20), left), ((260, 180), right)):
        frame[y:y + 40, x:x + 40] = 255
        cv2.putText(frame, d, (x + 8, y + 33), cv2.FONT_HERSHEY_SIMPLEX, 1.1, (0, 0, 0), 3)
    return frame


BOXES = {"left": [20, 20, 40, 40], "right": [260, 180, 40, 40]}


def _region_msg(frame: np.ndarray, name: str, **kw) -> dict:
    x, y, w, h = BOXES[name]
    crop = cv2.cvtColor(cv2.resize(frame[y:y + h, x:x + w], (28, 28), interpolation=cv2.INTER_AREA),
                        cv2.COLOR_BGR2GRAY)
    return _valid(frame_sample(frame, model_input=crop, region={"name": name, "box": BOXES[name]}, **kw))


def test_two_regions_of_one_frame_are_two_samples(tmp_path):
    """Same device/run_id/seq/frame_id and the same frame bytes: two regions are still two samples,
    read back with their region; each is a duplicate only of itself (a redelivery), even when the
    two regions look alike."""
    frame = _two_digit_frame("3", "7")
    store = FeedbackStore(tmp_path / "fb")
    a, b = (store.add(_region_msg(frame, name)) for name in ("left", "right"))
    assert a is not None and b is not None
    assert store.add(_region_msg(frame, "left")) is None and store.duplicates == 1
    assert store.add(frame_sample(frame)) is not None  # and the whole frame (no region) is a third
    sa, sb = store.get(a), store.get(b)
    assert (sa.region, sa.region_box, sb.region, sb.region_box) == ("left", (20, 20, 40, 40),
                                                                      "right", (260, 180, 40, 40))
    assert store.get(3).region is None and store.get(3).region_box is None
    assert np.array_equal(sa.region_image(), frame[20:60, 20:60])
    assert "region: left [20, 20, 40, 40] (x, y, w, h)" in label_mod.describe(sa, 1, 2, LABELS)
    # Two regions showing the same digit: identical crops, yet each region's own reading.
    same = _two_digit_frame("4", "4")
    assert store.add(_region_msg(same, "left", seq=1, frame_id=1)) is not None
    assert store.add(_region_msg(same, "right", seq=1, frame_id=1)) is not None
    assert store.counts()["total"] == 5 and store.duplicates == 1


def test_a_region_is_deduplicated_on_what_the_model_saw_not_the_frame(tmp_path):
    """The frame hardly changes when a small region does: judged on the frame, the next reading of
    the region would be a 'duplicate'. Judged on the region's model input it is new; the same
    reading again (other bytes, e.g. a new frame id) is a duplicate."""
    first, second = _two_digit_frame("3", "7"), _two_digit_frame("8", "7")
    assert hamming(phash(first), phash(second)) <= 4  # the frames are perceptual duplicates
    store = FeedbackStore(tmp_path / "fb")
    assert store.add(_region_msg(first, "left", seq=0, frame_id=0)) is not None
    assert store.add(_region_msg(second, "left", seq=1, frame_id=1)) is not None
    second[239, 0] = 1  # other bytes, same picture
    assert store.add(_region_msg(second, "left", seq=2, frame_id=2)) is None
    assert store.duplicates == 1


# The samples table as the code before regions and model-input colours made it.
OLD_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE seen_labels (name TEXT PRIMARY KEY, idx INTEGER NOT NULL);
CREATE TABLE samples (
    id INTEGER PRIMARY KEY,
    device TEXT NOT NULL, run_id TEXT NOT NULL, seq INTEGER NOT NULL, frame_id INTEGER NOT NULL,
    ts REAL NOT NULL, received REAL NOT NULL,
    model_name TEXT NOT NULL, model_version TEXT NOT NULL, model_sha256 TEXT NOT NULL,
    reasons TEXT NOT NULL, top_k TEXT NOT NULL, scores TEXT NOT NULL,
    predicted TEXT, score REAL,
    phash INTEGER NOT NULL, image_sha256 TEXT NOT NULL,
    image_path TEXT NOT NULL, input_path TEXT, image_bytes INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'labelled', 'skipped')),
    label TEXT, labelled_by TEXT, labelled_at REAL,
    UNIQUE (device, run_id, seq, frame_id)
);
CREATE INDEX samples_sha ON samples (image_sha256);
CREATE INDEX samples_device ON samples (device, id);
CREATE INDEX samples_status ON samples (status, id);
"""


def test_a_store_made_by_the_old_code_opens_and_takes_new_samples(tmp_path):
    """Its rows are kept (a legacy colour model input, RGB bytes in the PNG's BGR slots, still reads
    as RGB and exports as a standard image), and it takes region samples sharing the old row's key."""
    root = tmp_path / "fb"
    (root / "images").mkdir(parents=True)
    (root / "inputs").mkdir()
    frame = _two_digit_frame("3", "7")
    legacy = _colour_input(2)[:32, :32]
    frame_png, input_png = cv2.imencode(".png", frame)[1].tobytes(), cv2.imencode(".png", legacy)[1].tobytes()
    (root / "images" / "1.png").write_bytes(frame_png)
    (root / "inputs" / "1.png").write_bytes(input_png)
    db = sqlite3.connect(root / "index.sqlite")
    db.executescript(OLD_SCHEMA)
    db.execute("INSERT INTO samples (id, device, run_id, seq, frame_id, ts, received, model_name, model_version, "
               "model_sha256, reasons, top_k, scores, predicted, score, phash, image_sha256, image_path, input_path, "
               "image_bytes, status, label) VALUES (1, 'cam1', 'run1', 0, 0, 1.0, 2.0, 'm', '1', ?, "
               "'[\"low_confidence\"]', '[{\"label\": \"3\", \"index\": 3, \"score\": 0.4}]', '[]', '3', 0.4, 5, "
               "'x', '1.png', '1.png', ?, 'labelled', '3')",
               ("ab" * 32, len(frame_png) + len(input_png)))
    db.execute("INSERT INTO meta VALUES ('next_id', '2'), ('labels', ?)", (json.dumps(LABELS),))
    db.commit()
    db.close()

    store = FeedbackStore(root)
    cols = {r[1] for r in store._db.execute("PRAGMA table_info(samples)")}
    assert {"region", "region_box", "input_colour"} <= cols
    old = store.get(1)
    assert (old.region, old.region_box, old.input_colour, old.label) == (None, None, None, "3")
    assert np.array_equal(old.model_input(), legacy)
    # a region sample with the old row's device/run_id/seq/frame_id: a new sample, not a duplicate
    sid = store.add(_region_msg(frame, "left"))
    assert sid == 2 and store.get(sid).region == "left"
    store.set_label(sid, "3")
    store.close()
    with FeedbackStore(root) as again:  # opening an upgraded store changes nothing
        assert [s.id for s in again.labelled()] == [1, 2]
        again.export_folder(tmp_path / "export")
    ds = load_dataset(str(tmp_path / "export"), class_names=["3"], colour="rgb", image_size=(32, 32))
    assert np.array_equal(ds.x[list(ds.ids).index("3/1.png")], legacy)

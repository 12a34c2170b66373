"""Host side of the feedback loop on real parts: mosquitto, paho, sqlite, real MNIST digits.

Samples are built with ``sdk.messages.sample`` and published through the device's own
transport (``sdk.mqtt.MqttPublisher``, QoS 1), collected by ``train.collect``, labelled through
``train.label`` driven on stdin, and exported for ``train.data.load_dataset``.
"""
from __future__ import annotations

import base64
import io
import logging
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from mqtt_fixtures import Broker, free_port, mosquitto  # noqa: F401  (fixture)
from sdk import messages
from sdk.mqtt import MqttPublisher
from sdk.topics import Topics
from sdk.uncertainty import hamming, phash
from train import collect, label
from train.data import load_dataset
from train.loop.collect import Collector
from train.loop.store import FeedbackError, FeedbackStore

REPO = Path(__file__).resolve().parents[1]
LABELS = [str(i) for i in range(10)]
MODEL = {"name": "lenet5-mnist", "version": "3", "sha256": "ab" * 32}


@pytest.fixture(scope="module")
def digits(mnist_dir):
    """120 MNIST test digits whose perceptual hashes are pairwise > 8 bits apart (no accidental dedup)."""
    ds = load_dataset(str(mnist_dir), split="test")
    picked, hashes = [], []
    for i in range(len(ds)):
        h = phash(ds.x[i, ..., 0])
        if all(hamming(h, o) > 8 for o in hashes):
            picked.append(i)
            hashes.append(h)
            if len(picked) == 120:
                break
    return ds.x[picked, ..., 0], ds.y[picked]


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
        width=28, height=28, model_input_png=png)


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

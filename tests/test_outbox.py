"""The outbox's two tiers and its group-commit window, on real sqlite files and real SIGKILLs.

The window (docs/mqtt.md, "Delivery guarantees"): a message neither acknowledged nor committed
when the process is killed is lost, so at most the messages of the last ``commit_interval_s``.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sdk.outbox import Outbox
from sdk_bundle_fixture import sdk_bundle  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parents[1]


def test_ids_stay_in_fifo_order_across_memory_and_disk(tmp_path):
    o = Outbox(tmp_path / "q.sqlite", commit_interval_s=60)
    ids = [o.put("t", b"a%d" % i, 1, False) for i in range(3)]
    assert o.commit() == 3 and o.staged == 0
    ids += [o.put("t", b"b%d" % i, 1, False) for i in range(3)]
    assert o.staged == 3 and len(o) == 6
    rows = o.peek(0, 10)
    assert [r[0] for r in rows] == ids == sorted(ids)
    assert [r[2] for r in rows] == [b"a0", b"a1", b"a2", b"b0", b"b1", b"b2"]
    assert [r[2] for r in o.peek(ids[1], 3)] == [b"a2", b"b0", b"b1"]  # one from disk, then memory
    assert [r[2] for r in o.peek(ids[4], 10)] == [b"b2"]
    o.delete([ids[0], ids[3]])  # one on disk, one staged
    assert len(o) == 4 and [r[2] for r in o.peek(0, 10)] == [b"a1", b"a2", b"b1", b"b2"]
    o.close()
    again = Outbox(tmp_path / "q.sqlite")
    assert [r[2] for r in again.peek(0, 10)] == [b"a1", b"a2", b"b1", b"b2"]
    assert again.put("t", b"c", 1, False) > ids[-1]  # ids never go back, even after deletes
    again.close()


def test_acknowledged_while_staged_is_never_written(tmp_path):
    o = Outbox(tmp_path / "q.sqlite", commit_interval_s=60)
    ids = [o.put("t", b"%d" % i, 1, False) for i in range(100)]
    o.delete(ids[:97])
    assert o.commit() == 3 and o.written == 3 and o.commits == 1
    o.close()
    assert len(Outbox(tmp_path / "q.sqlite")) == 3


def test_full_outbox_drops_oldest_from_disk_first(tmp_path):
    o = Outbox(tmp_path / "q.sqlite", max_messages=4, commit_interval_s=60)
    for i in range(3):
        o.put("t", b"d%d" % i, 1, False)
    o.commit()
    for i in range(3):
        o.put("t", b"m%d" % i, 1, False)
    assert o.dropped == 2 and len(o) == 4
    assert [r[2] for r in o.peek(0, 10)] == [b"d2", b"m0", b"m1", b"m2"]
    for i in range(3, 6):
        o.put("t", b"m%d" % i, 1, False)
    assert [r[2] for r in o.peek(0, 10)] == [b"m2", b"m3", b"m4", b"m5"] and o.dropped == 5
    o.close()


def test_commit_due_in_follows_the_oldest_staged_message(tmp_path):
    o = Outbox(tmp_path / "q.sqlite", commit_interval_s=0.3)
    assert o.commit_due_in() == float("inf") and o.commit_if_due() == 0
    o.put("t", b"x", 1, False)
    assert 0.2 < o.commit_due_in() <= 0.3 and o.commit_if_due() == 0
    time.sleep(0.31)
    assert o.commit_due_in() == 0 and o.commit_if_due() == 1 and o.staged == 0
    o.close()
    with pytest.raises(ValueError, match="commit_interval_s"):
        Outbox(":memory:", commit_interval_s=-1)


_CHILD = r"""
import sys, time
sys.path.insert(0, {repo!r})
from sdk.mqtt import MqttPublisher
from sdk.outbox import Outbox
pub = MqttPublisher("127.0.0.1", {port}, outbox=Outbox({path!r}, commit_interval_s={interval}), reconnect_max_s=1)
pub.start()
for i in range({n}):
    pub.publish("edge/v1/t/result", b"%d" % i, qos=1)
print("queued", flush=True)
time.sleep(60)
"""


def _kill_after_queueing(tmp_path: Path, interval: float, n: int, wait_s: float) -> list[bytes]:
    """A real publisher (its broker unreachable) queues ``n`` messages; SIGKILL it ``wait_s`` later;
    what the outbox file then holds."""
    with socket.socket() as s:  # a free port with nothing listening: the broker is down
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = str(tmp_path / f"outbox-{interval}.sqlite")
    code = _CHILD.format(repo=str(REPO), port=port, path=path, interval=interval, n=n)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "queued"
        time.sleep(wait_s)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    o = Outbox(path)
    try:
        return [r[2] for r in o.peek(0, n + 10)]
    finally:
        o.close()


def test_sigkill_after_the_commit_window_loses_nothing(tmp_path):
    """Past ``commit_interval_s`` every queued message is on disk, though nothing was acknowledged."""
    assert _kill_after_queueing(tmp_path, 0.1, 500, wait_s=0.6) == [b"%d" % i for i in range(500)]


def test_commit_interval_zero_writes_before_publish_returns(tmp_path):
    assert _kill_after_queueing(tmp_path, 0, 50, wait_s=0) == [b"%d" % i for i in range(50)]


def test_sigkill_inside_the_window_loses_the_staged_messages(tmp_path):
    """The window is real (what docs/mqtt.md states): killed within it, staged messages are gone."""
    assert _kill_after_queueing(tmp_path, 30, 50, wait_s=0) == []


def test_interpreter_threads_default_to_one_for_small_models(sdk_bundle, tmp_path):
    """The device's default: 1 interpreter thread for a small input (a pool costs more than it saves)."""
    import json
    import shutil

    from sdk.app import interpreter_threads

    assert interpreter_threads(sdk_bundle, None) == 1  # 28x28 MNIST
    assert interpreter_threads(sdk_bundle, 3) == 3  # the config wins
    big = tmp_path / "big"
    shutil.copytree(sdk_bundle, big)
    manifest = json.loads((big / "manifest.json").read_text())
    manifest["input"]["shape"] = [1, 96, 96, 3]
    (big / "manifest.json").write_text(json.dumps(manifest))
    assert interpreter_threads(big, None) is None  # the runtime's default
    manifest["num_threads"] = 2
    (big / "manifest.json").write_text(json.dumps(manifest))
    assert interpreter_threads(big, None) == 2  # the bundle's

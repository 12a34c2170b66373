"""Network streams for real: a loopback MJPEG-over-HTTP server and GStreamer's RTSP server
(``stream_server``), the device opening them as ``--rtsp URL`` (OpenCV's FFmpeg backend), a real
INT8 bundle and a real mosquitto.

The server drops (connections closed, port refused) or hangs (nothing sent, requests not
answered) mid-stream; the device must report the disconnect and the reconnect on ``event``
with its backoff, carry on classifying, and deliver every result it made.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

import sdk
from contract import validate
from mqtt_fixtures import Collector, mosquitto  # noqa: F401  (fixture)
from sdk.config import Config
from sdk.sources import open_stream
from sdk_bundle_fixture import sdk_bundle  # noqa: F401  (fixture)
from stream_server import (
    mjpeg_server,  # noqa: F401  (fixture)
    rtsp_server,  # noqa: F401  (fixture)
)

REPO = Path(__file__).resolve().parents[1]
DEVICE = "cam1"
BACKOFF = {"reconnect_min_s": 0.2, "reconnect_max_s": 1.0}


def events(col: Collector) -> list[dict]:
    return [json.loads(p) for p in col.on(f"{DEVICE}/event")]


def event_kinds(col: Collector) -> list[str]:
    return [e["event"] for e in events(col)]


def results_after(col: Collector, wall: float) -> int:
    """Results of frames captured after ``wall`` (unix time)."""
    return sum(json.loads(p)["ts"] > wall for p in col.on(f"{DEVICE}/result"))


def expected_delays(attempts: int) -> list[float]:
    return [min(BACKOFF["reconnect_min_s"] * 2 ** i, BACKOFF["reconnect_max_s"]) for i in range(attempts)]


def settings(bundle, url: str, broker, tmp_path: Path, camera: dict) -> dict:
    return {"device_id": DEVICE, "source": url, "model": str(bundle),
            "mqtt": {"broker": broker.address, "outbox_path": str(tmp_path / "outbox.sqlite"),
                     "reconnect_min_s": 0.2, "reconnect_max_s": 1.0},
            "camera": {**BACKOFF, **camera}, "sampling": {"enabled": False}, "update": {"enabled": False},
            "metrics_interval_s": 0.5}


class Device:
    """``sdk.run(config)`` on a thread until the ``with`` block ends."""

    def __init__(self, config: Config):
        self.config = config
        self.stop = threading.Event()
        self.stats = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="device", daemon=True)

    def _run(self) -> None:
        try:
            self.stats = sdk.run(self.config, self.stop)
        except BaseException as e:  # reported by wait() / __exit__
            self.error = e

    def wait(self, pred, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if pred():
                return True
            if not self.thread.is_alive():
                raise AssertionError(f"the device stopped early: {self.error!r}")
            time.sleep(0.05)
        return pred()

    def __enter__(self) -> "Device":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(60)
        assert not self.thread.is_alive(), "the device did not stop within 60 s"
        if self.error is not None and exc[0] is None:
            raise self.error


def assert_every_result_arrived(col: Collector, published: int, run_id: str) -> list[dict]:
    """Exactly seq 0..published-1 of ``run_id``: none lost, none twice."""
    assert col.wait_for(lambda c: len(c.on(f"{DEVICE}/result")) >= published and "stopped" in event_kinds(c), 30)
    results = validate("result", col.on(f"{DEVICE}/result"))
    assert {r["run_id"] for r in results} == {run_id}
    assert sorted(r["seq"] for r in results) == list(range(published))
    return results


@pytest.mark.slow

def assert_one_drop_and_reconnect(evs: list[dict], url: str) -> None:
    """Exactly one ``source_disconnected`` then one ``source_reconnected`` between ``started`` and
    ``stopped``, for ``url``: the drop seen at once, the reopen retried with doubling, capped backoff."""
    kinds = [e["event"] for e in evs]
    assert kinds.count("source_disconnected") == kinds.count("source_reconnected") == 1, kinds
    assert kinds.index("started") < kinds.index("source_disconnected") < kinds.index("source_reconnected") \
        < kinds.index("stopped")
    lost = evs[kinds.index("source_disconnected")]["detail"]
    back = evs[kinds.index("source_reconnected")]["detail"]
    assert lost["source"] == back["source"] == url
    assert lost["retry_in_s"] == BACKOFF["reconnect_min_s"] and lost["backoff_max_s"] == BACKOFF["reconnect_max_s"]
    assert lost["failed_reads"] >= 1 and lost["no_frame_for_s"] < 5.0  # a closed connection is seen at once
    assert back["attempts"] >= 2, back  # the server was still down at the first attempts
    assert back["delays_s"] == expected_delays(back["attempts"]), back  # doubling backoff, capped
    assert back["downtime_s"] >= sum(back["delays_s"]) - 0.01 and back["downtime_s"] >= 1.0, back


def _start_cli(url: str, s: dict, tmp_path: Path):
    """``python -m sdk.cli --rtsp URL --config FILE -v`` with settings ``s`` (their source aside);
    ``(process, log file, wait)``: ``wait(pred, timeout)`` polls ``pred`` and fails at once, with
    the log, if the device exited."""
    cfg = tmp_path / "device.yaml"
    cfg.write_text(yaml.safe_dump({k: v for k, v in s.items() if k != "source"}))
    log = tmp_path / "edge-classify.log"
    with log.open("w") as f:  # a file, not a pipe: a full pipe would block the device's logging
        proc = subprocess.Popen([sys.executable, "-m", "sdk.cli", "--rtsp", url, "--config", str(cfg), "-v"],
                                cwd=REPO, stdout=subprocess.DEVNULL, stderr=f)

    def wait(pred, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if pred():
                return True
            if proc.poll() is not None:
                raise AssertionError(f"edge-classify exited with {proc.returncode}:\n{log.read_text()}")
            time.sleep(0.05)
        return pred()

    return proc, log, wait

def test_stream_dropped_and_restarted_reconnects_with_backoff(sdk_bundle, mjpeg_server, mosquitto, tmp_path):
    server = mjpeg_server
    col = Collector(mosquitto.port, (f"edge/v1/{DEVICE}/#",))
    assert col.wait_subscribed()
    config = Config(**settings(sdk_bundle, server.url, mosquitto, tmp_path,
                               {"open_timeout_s": 5.0, "read_timeout_s": 5.0}))
    try:
        with Device(config) as dev:
            assert dev.wait(lambda: len(col.on(f"{DEVICE}/result")) >= 15, 60), "no results from the stream"
            server.stop()  # connections closed, the port refuses
            stopped = time.monotonic()
            assert dev.wait(lambda: "source_disconnected" in event_kinds(col), 20), event_kinds(col)
            # down for 2 s, and for 1 s after the device noticed: its first attempt (after 0.2 s) must fail
            time.sleep(max(0.0, stopped + 2.0 - time.monotonic(), 1.0))
            restarted = time.time()
            server.start()
            assert dev.wait(lambda: "source_reconnected" in event_kinds(col), 20), event_kinds(col)
            assert dev.wait(lambda: results_after(col, restarted) >= 15, 30), "no results after the reconnect"
        stats = dev.stats
        assert stats.ended_by == "stopped" and stats.published >= 30
        results = assert_every_result_arrived(col, stats.published, stats.run_id)
    finally:
        col.close()

    evs = validate("event", col.on(f"{DEVICE}/event"))
    assert_one_drop_and_reconnect(evs, server.url)
    assert server.connections >= 2
    stopped_detail = next(e for e in evs if e["event"] == "stopped")["detail"]
    assert stopped_detail["published"] == stats.published
    metrics = validate("metrics", col.on(f"{DEVICE}/metrics"))
    assert metrics[-1]["source_reconnects"] == 1

    # real frames: before the drop, frame k of the device is frame k of the server's first connection
    first = [r for r in results if r["ts"] < restarted]
    assert len(first) >= 10
    correct = sum(int(r["top_k"][0]["label"]) == server.labels[r["frame_id"] % len(server.labels)] for r in first)
    assert correct >= 0.8 * len(first), f"{correct} of {len(first)} digits right"


@pytest.mark.slow
def test_hung_stream_times_out_and_cli_reconnects(sdk_bundle, mjpeg_server, mosquitto, tmp_path):
    """The server stops sending without closing anything (a frozen camera, a cut link): the read
    and open timeouts notice it in seconds (FFmpeg alone waits 30 s per read and per open)."""
    server = mjpeg_server
    timeout_s = 2.0  # well above a frame interval (1/15 s) even on a loaded machine
    col = Collector(mosquitto.port, (f"edge/v1/{DEVICE}/#",))
    assert col.wait_subscribed()
    proc, log, wait = _start_cli(server.url, settings(sdk_bundle, server.url, mosquitto, tmp_path,
                                                      {"open_timeout_s": timeout_s, "read_timeout_s": timeout_s}),
                                 tmp_path)

    try:
        assert wait(lambda: len(col.on(f"{DEVICE}/result")) >= 15, 60), "no results from the stream"
        server.freeze()
        assert wait(lambda: "source_disconnected" in event_kinds(col), 15), event_kinds(col)
        # a second request while frozen: the first reopen attempt gave up after open_timeout_s
        assert wait(lambda: server.stalled >= 2, 15), f"{server.stalled} requests while frozen"
        thawed = time.time()
        server.thaw()
        assert wait(lambda: "source_reconnected" in event_kinds(col), 20), event_kinds(col)
        assert wait(lambda: results_after(col, thawed) >= 15, 30), "no results after the reconnect"
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        assert proc.returncode == 0, log.read_text()
        assert col.wait_for(lambda c: "stopped" in event_kinds(c), 20)
        evs = validate("event", col.on(f"{DEVICE}/event"))
        stopped = next(e for e in evs if e["event"] == "stopped")
        assert stopped["detail"]["reason"] == "stopped"
        assert_every_result_arrived(col, stopped["detail"]["published"], stopped["run_id"])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        col.close()

    kinds = [e["event"] for e in evs]
    assert kinds.count("source_disconnected") == kinds.count("source_reconnected") == 1, kinds
    lost = next(e for e in evs if e["event"] == "source_disconnected")["detail"]
    back = next(e for e in evs if e["event"] == "source_reconnected")["detail"]
    assert 0.8 * timeout_s <= lost["no_frame_for_s"] < 10, lost  # the read timeout, not FFmpeg's 30 s
    assert back["attempts"] >= 2 and back["delays_s"] == expected_delays(back["attempts"]), back
    assert back["downtime_s"] >= timeout_s + sum(back["delays_s"][:1]), back  # a hung attempt waited its timeout


def test_rtsp_transport_option_is_for_rtsp_urls_only(monkeypatch):
    key = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
    monkeypatch.setenv(key, "placeholder")
    monkeypatch.delenv(key)  # absent during the test, restored after it
    open_stream("http://127.0.0.1:9/stream.mjpg")
    assert key not in os.environ
    open_stream("rtsp://user:pw@127.0.0.1:9/stream1", transport="udp")
    assert os.environ[key] == "rtsp_transport;udp"
    open_stream("rtsps://127.0.0.1:9/stream1")  # what the user (or an earlier stream) set stays
    assert os.environ[key] == "rtsp_transport;udp"
    with pytest.raises(ValueError, match="valid: tcp, udp"):
        open_stream("rtsp://127.0.0.1:9/stream1", transport="quic")
    with pytest.raises(ValueError, match="timeouts must be > 0"):
        open_stream("http://127.0.0.1:9/stream.mjpg", read_timeout_s=0)


@pytest.mark.slow
def test_rtsp_server_terminated_and_restarted_cli_reconnects(sdk_bundle, rtsp_server, mosquitto, tmp_path):
    """``edge-classify --rtsp URL`` against a real RTSP server (GStreamer's, RTP/JPEG over the RTSP
    TCP connection): the server process is terminated mid-stream and started again on the same
    port 2 s later; the device reports both on ``event`` with its backoff and loses no result."""
    server = rtsp_server
    col = Collector(mosquitto.port, (f"edge/v1/{DEVICE}/#",))
    assert col.wait_subscribed()
    proc, log, wait = _start_cli(server.url, settings(sdk_bundle, server.url, mosquitto, tmp_path,
                                                      {"open_timeout_s": 5.0, "read_timeout_s": 5.0}), tmp_path)

    try:
        assert wait(lambda: len(col.on(f"{DEVICE}/result")) >= 15, 60), f"no results:\n{server.log_text()}"
        before = server.connections
        server.stop()  # SIGTERM: the RTSP connection drops, the port refuses
        stopped = time.monotonic()
        assert wait(lambda: "source_disconnected" in event_kinds(col), 20), event_kinds(col)
        # down for 2 s, and for 1 s after the device noticed: its first attempt (after 0.2 s) must fail
        time.sleep(max(0.0, stopped + 2.0 - time.monotonic(), 1.0))
        restarted = time.time()
        server.start()
        assert wait(lambda: "source_reconnected" in event_kinds(col), 20), event_kinds(col)
        assert wait(lambda: results_after(col, restarted) >= 15, 30), "no results after the reconnect"
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        assert proc.returncode == 0, log.read_text()
        assert col.wait_for(lambda c: "stopped" in event_kinds(c), 20)
        evs = validate("event", col.on(f"{DEVICE}/event"))
        stopped_ev = next(e for e in evs if e["event"] == "stopped")
        assert stopped_ev["detail"]["reason"] == "stopped"
        published = stopped_ev["detail"]["published"]
        assert published >= 30
        results = assert_every_result_arrived(col, published, stopped_ev["run_id"])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        col.close()

    assert_one_drop_and_reconnect(evs, server.url)
    assert before >= 1 and server.connections >= before + 1, server.log_text()  # the new process served it
    metrics = validate("metrics", col.on(f"{DEVICE}/metrics"))
    assert metrics[-1]["source_reconnects"] == 1

    # real frames: before the drop, frame k of the device is frame k of the server's first session
    first = [r for r in results if r["ts"] < restarted]
    assert len(first) >= 10
    correct = sum(int(r["top_k"][0]["label"]) == server.labels[r["frame_id"] % len(server.labels)] for r in first)
    assert correct >= 0.8 * len(first), f"{correct} of {len(first)} digits right"
    # after it, the new session starts at the server's frame 0 again, at a frame_id the source chose
    after = [r for r in results if r["ts"] > restarted]
    n = len(server.labels)
    correct = max(sum(int(r["top_k"][0]["label"]) == server.labels[(r["frame_id"] - k) % n] for r in after)
                  for k in range(n))
    assert correct >= 0.8 * len(after), f"{correct} of {len(after)} digits right after the reconnect"

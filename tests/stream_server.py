"""A real MJPEG-over-HTTP stream server for tests, on a free loopback port.

``multipart/x-mixed-replace`` as IP cameras and ``mjpg-streamer`` serve it (OpenCV's FFmpeg
backend opens it like an RTSP URL): each part is one JPEG of a real MNIST test digit drawn on
paper (``videos.paper_frame``), sent at ``fps`` to every client. ``stop()`` closes the listening
socket and every open client connection (the stream drops: clients see the connection end and
new connections are refused); ``start()`` listens again on the same port. ``freeze()`` is a
server that hangs instead: connections stay open and new ones are accepted, but nothing is
sent (no frame, no response) until ``thaw()``.

``RtspServer`` is a real RTSP server, GStreamer's (``rtsp_server.py`` run by the system python),
serving the same JPEGs as RTP/JPEG; ``stop()`` terminates it, ``start()`` runs it again on the
same port.
"""
from __future__ import annotations

import http.server
import socket
import subprocess
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from mqtt_fixtures import free_port
from sdk_bundle_fixture import load_mnist
from train.data.videos import paper_frame

BOUNDARY = "edgeclf-frame"
PATH = "/stream.mjpg"


def digit_jpegs(digits: np.ndarray, size: tuple[int, int] = (320, 240), seed: int = 0,
                quality: int = 85) -> list[bytes]:
    """One JPEG per digit (28x28 MNIST), drawn dark on paper."""
    rng = np.random.default_rng(seed)
    out = []
    for d in digits:
        ok, buf = cv2.imencode(".jpg", paper_frame(d, rng, size), [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise RuntimeError("cv2.imencode cannot write JPEG")
        out.append(buf.tobytes())
    return out


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True  # restart on the same port while old connections sit in TIME_WAIT


class MjpegServer:
    """Serves ``frames`` (JPEG bytes, cycled) at ``fps`` on ``http://127.0.0.1:<port>/stream.mjpg``.

    Every connection starts at frame 0; ``labels`` (optional) are the frames' true classes.
    """

    def __init__(self, frames: list[bytes], fps: float = 15.0, port: int | None = None, labels=None):
        if not frames:
            raise ValueError("no frames to serve")
        if labels is not None and len(labels) != len(frames):
            raise ValueError(f"{len(labels)} labels for {len(frames)} frames")
        self.frames = frames
        self.labels = None if labels is None else [int(v) for v in labels]
        self.period = 1.0 / fps
        self.port = port or free_port()
        self.sent = 0           # parts written, over all clients and restarts
        self.connections = 0    # stream requests accepted, over all restarts
        self.stalled = 0        # stream requests that arrived while frozen
        self._lock = threading.Lock()
        self._clients: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._down = threading.Event()  # set while stopped: handlers end their loops
        self._flowing = threading.Event()  # clear while frozen
        self._flowing.set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{PATH}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def freeze(self) -> None:
        """Hang: keep every connection open but send nothing, and answer no new request."""
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    def _wait_flowing(self) -> bool:
        while not self._flowing.wait(0.05):
            if self._down.is_set():
                return False
        return not self._down.is_set()

    def _handler(self):
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                if self.path.split("?")[0] != PATH:
                    self.send_error(404)
                    return
                with owner._lock:
                    if owner._down.is_set():
                        return
                    owner._clients.add(self.connection)
                    owner.connections += 1
                    if not owner._flowing.is_set():
                        owner.stalled += 1
                try:
                    if not owner._wait_flowing():
                        return
                    self.send_response(200)
                    self.send_header("Content-Type", f"multipart/x-mixed-replace;boundary={BOUNDARY}")
                    self.send_header("Cache-Control", "no-cache")
                    self.send_header("Connection", "close")
                    self.end_headers()
                    i = 0
                    while owner._wait_flowing():
                        jpg = owner.frames[i % len(owner.frames)]
                        self.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                                         f"Content-Length: {len(jpg)}\r\n\r\n".encode() + jpg + b"\r\n")
                        self.wfile.flush()
                        with owner._lock:
                            owner.sent += 1
                        i += 1
                        owner._down.wait(owner.period)
                except OSError:  # the client went away, or stop() closed the connection
                    pass
                finally:
                    with owner._lock:
                        owner._clients.discard(self.connection)

        return Handler

    def start(self) -> "MjpegServer":
        if self._server is not None:
            return self
        self._down.clear()
        self._server = _Server(("127.0.0.1", self.port), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"mjpeg-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Drop the stream: stop listening and close every client connection."""
        if self._server is None:
            return
        self._down.set()
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            clients, self._clients = list(self._clients), set()
        for c in clients:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(5)
        self._server = self._thread = None

    def __enter__(self) -> "MjpegServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@pytest.fixture
def mjpeg_server(mnist_dir):
    """A started :class:`MjpegServer` of 40 real MNIST test digits at 15 fps."""
    x, y = load_mnist(mnist_dir, "test")
    with MjpegServer(digit_jpegs(x[:40], seed=7), fps=15, labels=y[:40]) as server:
        yield server


# -- RTSP ----------------------------------------------------------------------------------
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's, which python3-gi installs into (the venv cannot see it)
RTSP_SCRIPT = Path(__file__).with_name("rtsp_server.py")
RTSP_APT = ("apt-get install -y python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base "
            "gstreamer1.0-plugins-good")


class RtspServer:
    """GStreamer's RTSP server (``rtsp_server.py``, a subprocess of the system python) serving
    ``frames`` (JPEG bytes, looped) at ``fps`` on ``rtsp://127.0.0.1:<port>/stream``.

    Every connection starts at frame 0; ``labels`` (optional) are the frames' true classes.
    ``stop()`` terminates the process (every connection drops, the port refuses); ``start()``
    runs a new one on the same port. ``connections`` counts the RTSP clients it accepted.
    """

    def __init__(self, frames: list[bytes], workdir: Path, fps: float = 15.0, port: int | None = None,
                 labels=None):
        if not frames:
            raise ValueError("no frames to serve")
        if labels is not None and len(labels) != len(frames):
            raise ValueError(f"{len(labels)} labels for {len(frames)} frames")
        self.labels = None if labels is None else [int(v) for v in labels]
        self.fps = fps
        self.port = port or free_port()
        self.workdir = Path(workdir)
        self.frames_dir = self.workdir / "frames"
        self.frames_dir.mkdir(parents=True, exist_ok=True)
        for i, jpg in enumerate(frames):
            (self.frames_dir / f"frame_{i:05d}.jpg").write_bytes(jpg)
        self.log = self.workdir / "rtsp-server.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/stream"

    @property
    def connections(self) -> int:
        return self.log_text().count("rtsp-server: client connected")

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def start(self, timeout: float = 30.0) -> "RtspServer":
        if self.proc is not None:
            return self
        if not Path(SYSTEM_PYTHON).exists():
            pytest.fail(f"{SYSTEM_PYTHON} is missing (GStreamer's RTSP server runs on it): {RTSP_APT}")
        with self.log.open("a") as f:  # a file, not a pipe: nobody reads it while the stream runs
            self.proc = subprocess.Popen([SYSTEM_PYTHON, str(RTSP_SCRIPT), str(self.port), str(self.frames_dir),
                                          str(self.fps)], stdout=f, stderr=subprocess.STDOUT)
        ready = self.log_text().count("rtsp-server: ready") + 1
        end = time.monotonic() + timeout
        while self.log_text().count("rtsp-server: ready") < ready:
            if self.proc.poll() is not None:
                rc, self.proc = self.proc.returncode, None
                if rc == 3:  # the script's "not installed"
                    said = self.log_text().strip().splitlines()[-1:]
                    pytest.fail(f"GStreamer's RTSP server is not installed: {RTSP_APT} ({RTSP_SCRIPT.name}: {said})")
                raise RuntimeError(f"the RTSP server exited with {rc}:\n{self.log_text()}")
            if time.monotonic() > end:
                self.stop()
                raise RuntimeError(f"the RTSP server did not start within {timeout} s:\n{self.log_text()}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        """SIGTERM: the process ends, every connection drops, the port refuses."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> "RtspServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@pytest.fixture
def rtsp_server(mnist_dir, tmp_path):
    """A started :class:`RtspServer` of 40 real MNIST test digits at 15 fps."""
    x, y = load_mnist(mnist_dir, "test")
    with RtspServer(digit_jpegs(x[:40], seed=7), tmp_path / "rtsp", fps=15, labels=y[:40]) as server:
        yield server

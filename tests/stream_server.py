"""A real MJPEG-over-HTTP stream server for tests, on a free loopback port.

``multipart/x-mixed-replace`` as IP cameras and ``mjpg-streamer`` serve it (OpenCV's FFmpeg
backend opens it like an RTSP URL): each part is one JPEG of a real MNIST test digit drawn on
paper (``videos.paper_frame``), sent at ``fps`` to every client. ``stop()`` closes the listening
socket and every open client connection (the stream drops: clients see the connection end and
new connections are refused); ``start()`` listens again on the same port. ``freeze()`` is a
server that hangs instead: connections stay open and new ones are accepted, but nothing is
sent (no frame, no response) until ``thaw()``.
"""
from __future__ import annotations

import http.server
import socket
import threading

import cv2
import numpy as np
import pytest

from mqtt_fixtures import free_port
from sdk_bundle_fixture import load_mnist
from videos import paper_frame

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

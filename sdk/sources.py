"""Frame sources: camera index, video file, RTSP URL, image folder.

``FrameSource`` protocol: ``read(timeout) -> Frame | None`` (None: no frame yet, or ``ended``),
``close()``, ``ended``, ``dropped``, ``events()``; every source is a context manager.

Files (video, images) are read on the caller's thread, every frame in order (optionally paced
to the fps cap). Live sources (camera, RTSP) capture on their own thread with latest-frame
semantics: a frame the consumer did not take before the next one arrived is dropped and
counted; a stream that fails is reopened with exponential backoff and each disconnect /
reconnect is queued as an event for the pipeline to publish. Network streams are opened with
open and read timeouts, so a server that vanishes without closing the connection is noticed
in seconds rather than after FFmpeg's default 30 s.
"""
from __future__ import annotations

import collections
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from .errors import SourceOpenError, SourceReadError

logger = logging.getLogger(__name__)

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}
KINDS = ("camera", "video", "rtsp", "images")
RTSP_TRANSPORTS = ("tcp", "udp", "udp_multicast", "http", "https")  # FFmpeg's rtsp_transport values
MAX_REPORTED_DELAYS = 16  # the source_reconnected event lists the waits of the first attempts only


@dataclass
class Frame:
    image: np.ndarray
    frame_id: int   # position in the source; gaps mean dropped frames
    ts: float       # unix time of capture


class _Base:
    ended = False
    dropped = 0
    reconnects = 0

    def __init__(self) -> None:
        self._events: collections.deque[tuple[str, dict]] = collections.deque(maxlen=100)

    def events(self) -> list[tuple[str, dict]]:
        out = []
        while self._events:
            out.append(self._events.popleft())
        return out

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:  # pragma: no cover - overridden
        pass


class _Pacer:
    """Sleeps so that frames are returned at most ``fps`` per second."""

    def __init__(self, fps: float | None):
        self.period = 1.0 / fps if fps else 0.0
        self.next = 0.0

    def wait(self, stop: threading.Event | None = None) -> None:
        if not self.period:
            return
        now = time.monotonic()
        if self.next > now:
            if stop is not None:
                stop.wait(self.next - now)
            else:
                time.sleep(self.next - now)
        self.next = max(self.next + self.period, time.monotonic())


class VideoFileSource(_Base):
    """Every frame of a video file, in order; ``loop`` starts over at the end.

    Decoding runs on its own thread, ``prefetch`` frames ahead (blocking, nothing dropped), so
    it overlaps preprocessing and inference on a second core.
    """

    _END = object()

    def __init__(self, path: str | Path, loop: bool = False, fps_cap: float | None = None, prefetch: int = 4):
        super().__init__()
        self.path = Path(path)
        self.loop = loop
        if not self.path.is_file():
            raise SourceReadError(f"video file not found: {self.path}")
        self._cap = cv2.VideoCapture(str(self.path))
        ok, first = self._cap.read() if self._cap.isOpened() else (False, None)
        if not ok:
            self._cap.release()
            raise SourceReadError(f"{self.path}: not a readable video (OpenCV could not decode a frame)")
        self.fps = self._cap.get(cv2.CAP_PROP_FPS) or 0.0
        self._pacer = _Pacer(fps_cap)
        self._stop = threading.Event()
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
        self._frames = 0
        self._thread = threading.Thread(target=self._decode, args=(first,), name="decode-video", daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _decode(self, first: np.ndarray) -> None:
        img: np.ndarray | None = first
        frame_id = 0
        try:
            while img is not None:
                if not self._put(Frame(img, frame_id, time.time())):
                    return
                frame_id += 1
                ok, img = self._cap.read()
                if not ok and self.loop:
                    self._cap.release()
                    self._cap = cv2.VideoCapture(str(self.path))
                    ok, img = self._cap.read()
                if not ok:
                    img = None
            self._frames = frame_id
            self._put(self._END)
        finally:
            self._cap.release()

    def read(self, timeout: float = 1.0) -> Frame | None:
        if self.ended:
            return None
        self._pacer.wait()
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if item is self._END:
            self.ended = True
            self._events.append(("source_ended", {"source": str(self.path), "frames": self._frames}))
            return None
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class ImageDirSource(_Base):
    """The images of a folder in name order; unreadable files are skipped and counted."""

    def __init__(self, path: str | Path, loop: bool = False, fps_cap: float | None = None):
        super().__init__()
        self.path = Path(path)
        if not self.path.is_dir():
            raise SourceReadError(f"image folder not found: {self.path}")
        self.files = sorted(p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_EXTS)
        if not self.files:
            raise SourceReadError(f"{self.path}: no images ({', '.join(sorted(IMAGE_EXTS))})")
        self.loop = loop
        self.unreadable = 0
        self._i = 0
        self._next_id = 0
        self._pacer = _Pacer(fps_cap)

    def read(self, timeout: float = 1.0) -> Frame | None:
        self._pacer.wait()
        while not self.ended:
            if self._i >= len(self.files):
                if not self.loop or self.unreadable >= len(self.files):
                    self.ended = True
                    self._events.append(("source_ended", {"source": str(self.path), "frames": self._next_id}))
                    return None
                self._i = 0
            p = self.files[self._i]
            self._i += 1
            img = cv2.imread(str(p), cv2.IMREAD_COLOR)
            if img is None:
                self.unreadable += 1
                logger.warning("skipping unreadable image %s", p)
                continue
            frame = Frame(img, self._next_id, time.time())
            self._next_id += 1
            return frame
        return None

    def close(self) -> None:
        pass


class LiveSource(_Base):
    """A capture thread over ``opener()`` (which returns a ``cv2.VideoCapture``).

    ``read()`` returns the newest frame not yet returned (waiting up to ``timeout``); frames
    overwritten before being read are counted in ``dropped``. After ``max_failures`` failed reads
    in a row the capture is reopened after ``backoff_min_s``, doubling up to ``backoff_max_s``;
    the ``source_disconnected`` / ``source_reconnected`` events carry those waits. How long one
    read or open may block is the opener's business (see :func:`open_stream`).
    """

    def __init__(self, opener: Callable[[], "cv2.VideoCapture"], name: str, fps_cap: float | None = None,
                 backoff_min_s: float = 0.5, backoff_max_s: float = 30.0, max_failures: int = 3):
        super().__init__()
        self.name = name
        self._opener = opener
        self._pacer = _Pacer(fps_cap)
        self.backoff_min_s, self.backoff_max_s = backoff_min_s, backoff_max_s
        self.max_failures = max_failures
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._latest: Frame | None = None
        self._taken = True
        self._next_id = 0
        self.connected = False
        cap = opener()
        ok, img = cap.read() if cap is not None and cap.isOpened() else (False, None)
        if not ok:
            if cap is not None:
                cap.release()
            raise SourceOpenError(f"{name}: cannot open (no frame could be read)")
        self._cap = cap
        self.connected = True
        self._publish_frame(img)  # type: ignore[arg-type]  # read() gave ok, so a frame
        self._thread = threading.Thread(target=self._run, name=f"capture-{name}", daemon=True)
        self._thread.start()

    def _publish_frame(self, img: np.ndarray) -> None:
        with self._cond:
            if not self._taken:
                self.dropped += 1
            self._latest = Frame(img, self._next_id, time.time())
            self._next_id += 1
            self._taken = False
            self._cond.notify_all()

    def _reconnect(self, failed_reads: int, last_frame: float) -> bool:
        """Reopen after ``backoff_min_s``, doubling up to ``backoff_max_s``, until it works or close()."""
        self.connected = False
        down = time.monotonic()
        self._cap.release()
        delay, attempts, delays = self.backoff_min_s, 0, list[float]()
        logger.warning("%s: stream lost (no frame for %.1fs); reconnecting in %.1fs", self.name, down - last_frame,
                       delay)
        self._events.append(("source_disconnected", {
            "source": self.name, "failed_reads": failed_reads, "no_frame_for_s": round(down - last_frame, 3),
            "retry_in_s": delay, "backoff_max_s": self.backoff_max_s}))
        while not self._stop.wait(delay):
            attempts += 1
            if len(delays) < MAX_REPORTED_DELAYS:
                delays.append(delay)
            cap = self._opener()
            ok, img = cap.read() if cap is not None and cap.isOpened() else (False, None)
            if ok:
                self._cap = cap
                self.connected = True
                self.reconnects += 1
                detail = {"source": self.name, "attempts": attempts, "downtime_s": round(time.monotonic() - down, 3),
                          "delays_s": delays}
                logger.info("%s: reconnected after %d attempts", self.name, attempts)
                self._events.append(("source_reconnected", detail))
                self._publish_frame(img)  # type: ignore[arg-type]  # read() gave ok, so a frame
                return True
            if cap is not None:
                cap.release()
            delay = min(delay * 2, self.backoff_max_s)
            logger.info("%s: reconnect attempt %d failed; next in %.1fs", self.name, attempts, delay)
        return False

    def _run(self) -> None:
        failures, last_frame = 0, time.monotonic()
        while not self._stop.is_set():
            ok, img = self._cap.read()
            if ok:
                failures, last_frame = 0, time.monotonic()
                self._publish_frame(img)
                continue
            failures += 1
            if failures >= self.max_failures:
                if not self._reconnect(failures, last_frame):
                    break
                failures, last_frame = 0, time.monotonic()
        self._cap.release()

    def read(self, timeout: float = 1.0) -> Frame | None:
        self._pacer.wait(self._stop)
        with self._cond:
            if self._taken:
                self._cond.wait(timeout)
            if self._taken or self._latest is None:
                return None
            self._taken = True
            return self._latest

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.ended = True


def open_camera(index: int, width: int | None = None, height: int | None = None, fps: float | None = None,
                backend: str = "auto") -> Callable[[], "cv2.VideoCapture"]:
    apis = {"auto": cv2.CAP_ANY, "v4l2": cv2.CAP_V4L2, "gstreamer": cv2.CAP_GSTREAMER, "ffmpeg": cv2.CAP_FFMPEG}
    if backend not in apis:
        raise ValueError(f"unknown camera backend {backend!r}; valid: {', '.join(apis)}")

    def opener():
        cap = cv2.VideoCapture(index, apis[backend])
        if cap.isOpened():
            if width:
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, width)
            if height:
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
            if fps:
                cap.set(cv2.CAP_PROP_FPS, fps)
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        return cap

    return opener


def open_stream(url: str, transport: str = "tcp", open_timeout_s: float = 10.0,
                read_timeout_s: float = 5.0) -> Callable[[], "cv2.VideoCapture"]:
    """An opener for a network stream (RTSP, HTTP MJPEG, ...) through OpenCV's FFmpeg backend.

    ``open_timeout_s`` bounds connecting and probing, ``read_timeout_s`` one ``read()``: without
    them FFmpeg waits 30 s for a server that stopped answering. ``transport`` is FFmpeg's
    ``rtsp_transport`` (one of ``RTSP_TRANSPORTS``) and applies to rtsp:// and rtsps:// URLs
    only; it goes through ``OPENCV_FFMPEG_CAPTURE_OPTIONS`` (OpenCV has no other way to pass it),
    unless that variable is set already.
    """
    if transport not in RTSP_TRANSPORTS:
        raise ValueError(f"unknown RTSP transport {transport!r}; valid: {', '.join(RTSP_TRANSPORTS)}")
    if not (open_timeout_s > 0 and read_timeout_s > 0):
        raise ValueError(f"stream timeouts must be > 0 (got open {open_timeout_s}, read {read_timeout_s})")
    if url.lower().startswith(("rtsp://", "rtsps://")):
        # set here, on the thread that builds the source, not from the capture thread at each reopen
        os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", f"rtsp_transport;{transport}")
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, max(1, round(open_timeout_s * 1000)),
              cv2.CAP_PROP_READ_TIMEOUT_MSEC, max(1, round(read_timeout_s * 1000))]

    def opener():
        cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG, params)
        if cap.isOpened():
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        return cap

    return opener


def parse_source(spec: str) -> tuple[str, str]:
    """``camera:0`` | ``video:PATH`` | ``rtsp://...`` (also rtsps/http/https) | ``images:DIR``."""
    if not isinstance(spec, str) or not spec:
        raise ValueError("no frame source given; use camera:N, video:PATH, rtsp://URL or images:DIR")
    low = spec.lower()
    if low.startswith(("rtsp://", "rtsps://", "http://", "https://", "rtmp://")):
        return "rtsp", spec
    kind, sep, rest = spec.partition(":")
    if sep and kind in KINDS and rest:
        if kind == "camera" and not rest.isdigit():
            raise ValueError(f"camera index must be a number (got {rest!r})")
        return kind, rest
    raise ValueError(f"unknown frame source {spec!r}; use camera:N, video:PATH, rtsp://URL or images:DIR")


def open_source(spec: str, *, loop: bool = False, fps_cap: float | None = None, width: int | None = None,
                height: int | None = None, camera_fps: float | None = None, backend: str = "auto",
                backoff_min_s: float = 0.5, backoff_max_s: float = 30.0, open_timeout_s: float = 10.0,
                read_timeout_s: float = 5.0):
    """Build the source named by ``spec`` (see :func:`parse_source`); the timeouts are for streams."""
    kind, arg = parse_source(spec)
    if kind == "video":
        return VideoFileSource(arg, loop=loop, fps_cap=fps_cap)
    if kind == "images":
        return ImageDirSource(arg, loop=loop, fps_cap=fps_cap)
    if kind == "camera":
        try:
            return LiveSource(open_camera(int(arg), width, height, camera_fps, backend), f"camera {arg}", fps_cap,
                              backoff_min_s, backoff_max_s)
        except SourceOpenError as e:
            raise SourceOpenError(f"camera index {arg} does not open (is it connected, is /dev/video{arg} "
                                  "readable by this user, is another program using it?)") from e
    return LiveSource(open_stream(arg, open_timeout_s=open_timeout_s, read_timeout_s=read_timeout_s), _redact(arg),
                      fps_cap, backoff_min_s, backoff_max_s)


def _redact(url: str) -> str:
    """An RTSP URL without its password, for logs and MQTT events."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        return f"{scheme}://{cred.split(':')[0]}:***@{host}"
    return url

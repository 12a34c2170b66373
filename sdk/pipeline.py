"""source -> preprocess (from the bundle) -> classify -> publish, with metrics.

The pipeline is handed built objects (a frame source, a classifier, a publisher, topics);
it never reads global configuration, so a test can give it a video file and a real broker.
Another thread (the model updater) may hand it a new classifier with :meth:`Pipeline.request_swap`;
the swap happens between two frames, so no frame is lost and the run does not stop.

Capture mode (:class:`Capture`) sends one frame every ``every_s`` seconds as a sample, reason
``capture``: with a classifier, next to the results (one sample per region, with what the model
saw); without one (``classifier`` None), instead of them: the frame, one sample per configured
region with its box, nothing classified and no result published.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Sequence, TextIO

import numpy as np

from . import classify, messages
from .preprocess import Preprocessor, roi_box
from .runtime import Bundle
from .topics import Topics
from .uncertainty import CaptureSchedule, Sampler, Selection, encode_model_input

logger = logging.getLogger(__name__)


@dataclass
class Classification:
    probs: np.ndarray
    top: list[classify.Class]
    preprocess_ms: float
    inference_ms: float
    postprocess_ms: float
    box: tuple[int, int, int, int] | None = None
    region: str | None = None                      # the named region classified (None: the frame)
    region_box: tuple[int, int, int, int] | None = None  # its pixel box [x, y, w, h] in the frame
    model_image: np.ndarray | None = None          # what the model saw (uint8, before normalization)

    @property
    def total_ms(self) -> float:
        return self.preprocess_ms + self.inference_ms + self.postprocess_ms


class Classifier:
    """A loaded bundle + its preprocessing: ``classify(frame) -> Classification``.

    ``regions`` maps a region name to ``(roi, resize_mode)``: each is preprocessed on its own and
    classified with ``classify(frame, region)``; ``regions`` lists what one frame is classified as
    (``[None]``, the frame or ``roi``, without named regions).
    """

    def __init__(self, bundle: Bundle, mode: str = "auto", roi=None, invert: str = "auto",
                 top_k: int = 3, threshold: float = 0.0, resize: str = "auto",
                 regions: Mapping[str, tuple[Sequence[float], str]] | None = None):
        self.bundle = bundle
        self.interpreter = bundle.interpreter
        self.manifest = bundle.manifest
        self.labels = bundle.labels
        self.top_k, self.threshold = top_k, threshold
        detail = classify.input_details(self.interpreter)
        self._input, self._output = detail, self.interpreter.get_output_details()[0]
        spec = self.manifest.input
        if regions:
            self.preprocessors: dict[str | None, Preprocessor] = {
                name: Preprocessor(spec, detail, mode, r_roi, invert, resize_mode=r_resize)
                for name, (r_roi, r_resize) in regions.items()}
        else:
            self.preprocessors = {None: Preprocessor(spec, detail, mode, roi, invert, resize_mode=resize)}
        self.regions: list[str | None] = list(self.preprocessors)
        self.preprocessor = self.preprocessors[self.regions[0]]
        self.model_info = messages.model_info(self.manifest)

    def classify(self, image: np.ndarray, region: str | None = None) -> Classification:
        pre = self.preprocessors[region] if region is not None else self.preprocessor
        t0 = time.perf_counter()
        tensor = pre(image)
        t1 = time.perf_counter()
        classify.set_input(self.interpreter, tensor, self._input)
        self.interpreter.invoke()
        t2 = time.perf_counter()
        probs = classify.probabilities(self.interpreter, self.manifest.output.activation, self._output)
        top = classify.top_k(probs, self.top_k, self.threshold)
        t3 = time.perf_counter()
        box = roi_box(image.shape, pre.roi) if pre.roi is not None else None
        return Classification(probs, top, (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3,
                              pre.last_box, region, box, pre.last_image)


def frame_time(frame) -> float:
    """A frame's capture time (Unix seconds): capture mode's clock for live sources and image folders."""
    return float(frame.ts)


@dataclass
class Capture:
    """Capture mode: a sample of each frame ``schedule`` finds due on ``clock(frame)`` (seconds).
    ``regions``: what a pipeline without a classifier sends of such a frame, one sample per entry:
    region name (None: no named region) -> roi ``[x, y, w, h]`` (None: the whole frame); with a
    classifier, its own regions are used."""

    schedule: CaptureSchedule
    clock: Callable[[Any], float] = frame_time
    regions: Mapping[str | None, Sequence[float] | None] = field(default_factory=lambda: {None: None})


@dataclass
class PipelineSettings:
    publish_mode: str = "every"       # every | change
    min_interval_ms: int = 0
    result_qos: int = 1
    sample_qos: int = 1
    metrics_interval_s: float = 10.0
    status_interval_s: float = 0.0    # terminal status line period (0: off)
    max_frames: int | None = None


@dataclass
class RunStats:
    """What a run did. ``published`` counts the results made and queued for publishing; what the
    broker acknowledged is ``delivered`` (set by :func:`sdk.run` once the publisher closed)."""

    run_id: str
    frames: int = 0
    published: int = 0
    samples: int = 0
    captured: int = 0        # of samples: capture mode's (reason capture)
    queued: int = 0          # messages put in the outbox by this run: results, samples, events
    delivered: int = 0       # outbox messages the broker acknowledged during this run (earlier runs' included)
    undelivered: int = 0     # left in the outbox at the end, sent at the next start
    outbox: str | None = None
    dropped_frames: int = 0
    elapsed_s: float = 0.0
    fps: float = 0.0
    first_result_s: float | None = None
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    inference_p50_ms: float | None = None
    last_label: str | None = None
    ended_by: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def _pct(values, q: float) -> float:
    return float(np.percentile(np.fromiter(values, float), q)) if values else 0.0


class Pipeline:
    """``classifier`` None: capture mode only (``capture`` and ``sampler`` needed); no results."""

    def __init__(self, source, classifier: Classifier | None, publisher, topics: Topics,
                 settings: PipelineSettings | None = None, sampler: Sampler | None = None,
                 status_stream: TextIO | None = None, run_id: str | None = None, capture: Capture | None = None):
        if classifier is None and (capture is None or sampler is None):
            raise ValueError("a pipeline without a classifier only captures frames: give it capture and a sampler")
        self.source = source
        self.classifier: Classifier | None = classifier
        self.capture = capture
        self.publisher = publisher
        self.topics = topics
        self.device = topics.device
        self.settings = settings or PipelineSettings()
        if self.settings.publish_mode not in ("every", "change"):
            raise ValueError(f"unknown publish mode {self.settings.publish_mode!r}; valid: every, change")
        self.sampler = sampler
        self.status_stream = status_stream
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.stats = RunStats(self.run_id)
        self._seq = 0
        self._lat: collections.deque[float] = collections.deque(maxlen=1000)
        self._inf: collections.deque[float] = collections.deque(maxlen=1000)
        self._times: collections.deque[float] = collections.deque(maxlen=120)
        self._recent: collections.deque[np.ndarray] = collections.deque(maxlen=3)
        self._swap_lock = threading.Lock()
        self._swaps: list[tuple[Classifier, Future]] = []
        self._accepting_swaps = True  # until run() ends
        self._last_score: float | None = None

    # -- model swaps (called from other threads) -----------------------------------------
    def request_swap(self, classifier: Classifier) -> Future:
        """Use ``classifier`` from the next frame on. The future resolves (with the id of the
        first frame classified by it, or None when no frame came yet) once the loop has switched;
        cancel it to withdraw the request."""
        fut: Future = Future()
        with self._swap_lock:
            if self._accepting_swaps:
                self._swaps.append((classifier, fut))
            else:  # the run is over: nobody will take it
                fut.cancel()
        return fut

    def recent_frames(self) -> list[np.ndarray]:
        """The last few frames classified (for smoke-testing a new model on real input)."""
        return list(self._recent)

    def _take_swaps(self, next_frame_id: int | None) -> None:
        with self._swap_lock:
            swaps, self._swaps = self._swaps, []
        for classifier, fut in swaps:
            if not fut.set_running_or_notify_cancel():
                continue
            old = self.classifier.model_info if self.classifier is not None else {"name": "(none)", "version": ""}
            self.classifier = classifier
            self.stats.extra["model_swaps"] = self.stats.extra.get("model_swaps", 0) + 1
            logger.info("model swapped: %s %s -> %s %s", old["name"], old["version"], classifier.model_info["name"],
                        classifier.model_info["version"])
            fut.set_result(next_frame_id)

    def _cancel_swaps(self) -> None:
        with self._swap_lock:
            swaps, self._swaps = self._swaps, []
            self._accepting_swaps = False
        for _, fut in swaps:
            fut.cancel()

    # -- publishing helpers --------------------------------------------------------------
    def _publish(self, topic: str, msg: dict, qos: int = 1, persist: bool = True) -> None:
        if self.publisher is not None:
            self.publisher.publish(topic, messages.encode(msg), qos=qos, retain=False, persist=persist)

    def _event(self, kind: str, detail: dict | None = None) -> None:
        self._publish(self.topics.event, messages.event(device=self.device, ts=time.time(), run_id=self.run_id,
                                                        event=kind, detail=detail))

    def _fps(self) -> float:
        if len(self._times) < 2:
            return 0.0
        span = self._times[-1] - self._times[0]
        return (len(self._times) - 1) / span if span > 0 else 0.0

    def _model_info(self) -> dict | None:
        return self.classifier.model_info if self.classifier is not None else None

    def metrics(self, started: float) -> dict:
        s = self.sampler
        pub = self.publisher
        top = self.stats.last_label
        return messages.metrics(
            device=self.device, ts=time.time(), run_id=self.run_id, model=self._model_info(),
            uptime_s=round(time.monotonic() - started, 3), frames=self.stats.frames, fps=round(self._fps(), 3),
            latency_ms={"p50": round(_pct(self._lat, 50), 3), "p95": round(_pct(self._lat, 95), 3)},
            inference_ms={"p50": round(_pct(self._inf, 50), 3), "p95": round(_pct(self._inf, 95), 3)},
            dropped_frames=int(getattr(self.source, "dropped", 0)),
            queue_depth=int(getattr(pub, "queue_depth", 0)),
            queued=int(getattr(pub, "queued", 0)), delivered=int(getattr(pub, "delivered", 0)),
            outbox_dropped=int(getattr(getattr(pub, "outbox", None), "dropped", 0)),
            source_reconnects=int(getattr(self.source, "reconnects", 0)),
            samples=s.selected if s else 0, samples_rate_limited=s.rate_limited if s else 0,
            samples_duplicate=s.duplicates if s else 0, samples_captured=s.captured if s else 0,
            last_label=top, last_score=self._last_score,
        )

    def _status_line(self) -> None:
        if self.status_stream is None:
            return
        pub = self.publisher
        q = getattr(pub, "queue_depth", 0)
        link = "up" if getattr(pub, "connected", True) else "DOWN"
        line = (f"\r{self._fps():6.1f} fps | p50 {_pct(self._lat, 50):5.1f} ms p95 {_pct(self._lat, 95):5.1f} ms | "
                f"last {self.stats.last_label} ({(self._last_score or 0):.2f}) | frames {self.stats.frames} "
                f"dropped {getattr(self.source, 'dropped', 0)} | mqtt {link} queued {getattr(pub, 'queued', 0)} "
                f"delivered {getattr(pub, 'delivered', 0)} pending {q}   ")
        self.status_stream.write(line)
        self.status_stream.flush()

    def _loop(self, stop: threading.Event, started: float) -> str:
        st = self.settings
        next_metrics = started + st.metrics_interval_s
        next_status = started + st.status_interval_s if st.status_interval_s else float("inf")
        last: dict[str | None, tuple[str | None, float]] = {}  # region -> (label, time) of its last result
        ended_by = "stopped"
        while not stop.is_set():
            if getattr(self.publisher, "fatal", None) is not None:
                ended_by = "broker_refused"  # the broker's certificate was refused: sdk.run raises it
                break
            for kind, detail in self.source.events():
                self._event(kind, detail)
            frame = self.source.read(0.5)
            now = time.monotonic()
            if self._swaps:
                self._take_swaps(frame.frame_id if frame is not None else None)
            if frame is None:
                if self.source.ended:
                    ended_by = "source_ended"
                    break
            else:
                self._recent.append(frame.image)
                self.stats.frames += 1
                self._times.append(now)
                due = self.capture is not None and self.capture.schedule.due(self.capture.clock(frame))
                if self.classifier is None:
                    if due and self.capture is not None:
                        for name, roi in self.capture.regions.items():
                            self._capture_frame(frame, name, roi)
                else:
                    for region in self.classifier.regions:
                        self._classify(self.classifier, frame, region, now, started, last, due)
                if st.max_frames and self.stats.frames >= st.max_frames:
                    ended_by = "max_frames"
                    break
            if now >= next_metrics:
                self._publish(self.topics.metrics, self.metrics(started), qos=0, persist=False)
                next_metrics = now + st.metrics_interval_s
            if now >= next_status:
                self._status_line()
                next_status = now + st.status_interval_s
        return ended_by

    def _classify(self, classifier: Classifier, frame, region: str | None, now: float, started: float,
                  last: dict[str | None, tuple[str | None, float]], capture: bool = False) -> None:
        """Classify the frame (or one named region of it), publish the result, consider it as a sample
        (``capture``: the frame is due in capture mode)."""
        st = self.settings
        labels = classifier.labels
        c = classifier.classify(frame.image, region)
        self._lat.append(c.total_ms)
        self._inf.append(c.inference_ms)
        top = messages.ranked(c.top, labels)
        label = labels[c.top[0].id] if c.top else None
        self.stats.last_label = label
        self._last_score = round(c.top[0].score, 4) if c.top else None
        last_label, last_t = last.get(region, (None, -float("inf")))
        if (st.publish_mode == "every" or label != last_label) and (now - last_t) * 1e3 >= st.min_interval_ms:
            msg = messages.result(
                device=self.device, seq=self._seq, run_id=self.run_id, ts=frame.ts, frame_id=frame.frame_id,
                model=classifier.model_info, top_k=top,
                latency_ms={"preprocess": c.preprocess_ms, "inference": c.inference_ms,
                            "postprocess": c.postprocess_ms, "total": c.total_ms},
                box=c.box, region=region)
            self._publish(self.topics.region_result(region), msg, qos=st.result_qos)
            self._seq += 1
            self.stats.published += 1
            last[region] = (label, now)
            if self.stats.first_result_s is None:
                self.stats.first_result_s = now - started
        if self.sampler is not None:
            self._sample(self.sampler, classifier, frame, c, top, capture)

    @staticmethod
    def _sent_box(sel: Selection, frame, name: str | None, box: tuple[int, int, int, int] | None) -> dict | None:
        """A sample's ``region``: the named region's box in pixels of the image sent (it may be downscaled)."""
        if name is None or not box:
            return None
        sx, sy = sel.width / frame.image.shape[1], sel.height / frame.image.shape[0]
        x, y, w, h = box
        return {"name": name, "box": [round(x * sx), round(y * sy), max(1, round(w * sx)), max(1, round(h * sy))]}

    def _sample(self, sampler: Sampler, classifier: Classifier, frame, c: Classification, top: list[dict],
                capture: bool = False) -> None:
        """Send the frame back when the sampler selects it (or capture mode is due), with what the model saw."""
        subject = frame.image if c.region_box is None else \
            frame.image[c.region_box[1]:c.region_box[1] + c.region_box[3], c.region_box[0]:c.region_box[0] + c.region_box[2]]
        sel = sampler.consider(frame.image, c.probs, subject if c.region is not None else None, capture=capture,
                               region=c.region)
        if sel is None:
            return
        policy = sampler.policy
        model_input = None
        if c.model_image is not None:
            encoded = encode_model_input(c.model_image, policy.model_input_format, policy.model_input_max_bytes)
            if encoded is None:
                self.stats.extra["samples_without_input"] = self.stats.extra.get("samples_without_input", 0) + 1
            else:
                h, w = c.model_image.shape[:2]
                model_input = messages.image_field(encoded[0], encoded[1], w, h,
                                                   colour="rgb" if c.model_image.ndim == 3 else "grey")
        self._publish(self.topics.sample, messages.sample(
            device=self.device, seq=max(0, self._seq - 1), run_id=self.run_id, ts=frame.ts,
            frame_id=frame.frame_id, model=classifier.model_info, reasons=sel.reasons,
            top_k=top, scores=c.probs.tolist(), stats=sel.stats(), image=sel.image,
            image_format=sel.image_format, width=sel.width, height=sel.height,
            model_input=model_input, region=self._sent_box(sel, frame, c.region, c.region_box)),
            qos=self.settings.sample_qos)
        self.stats.samples += 1
        self.stats.captured += int(capture)

    def _capture_frame(self, frame, name: str | None, roi: Sequence[float] | None) -> None:
        """Capture mode without a model: the frame as a sample (``model`` null, nothing classified). A named
        region sends the frame with the region's box (the host crops it); a single ``roi`` sends its crop."""
        sampler = self.sampler
        assert sampler is not None  # checked in __init__
        box = roi_box(frame.image.shape, roi) if roi is not None else None
        crop = frame.image[box[1]:box[1] + box[3], box[0]:box[0] + box[2]] if box is not None else None
        image = crop if crop is not None and name is None else frame.image
        sel = sampler.consider(image, None, crop if name is not None else None, capture=True, region=name)
        if sel is None:
            return
        self._publish(self.topics.sample, messages.sample(
            device=self.device, seq=max(0, self._seq - 1), run_id=self.run_id, ts=frame.ts,
            frame_id=frame.frame_id, model=None, reasons=sel.reasons, top_k=[], scores=[], stats=sel.stats(),
            image=sel.image, image_format=sel.image_format, width=sel.width, height=sel.height,
            region=self._sent_box(sel, frame, name, box)), qos=self.settings.sample_qos)
        self.stats.samples += 1
        self.stats.captured += 1

    # -- main loop -----------------------------------------------------------------------
    def run(self, stop: threading.Event | None = None) -> RunStats:
        stop = stop or threading.Event()
        st = self.settings
        started = time.monotonic()
        self._last_score = None
        self._event("started", {"model": self._model_info(), "source": type(self.source).__name__})
        ended_by = "stopped"
        try:
            ended_by = self._loop(stop, started)
        finally:
            self._cancel_swaps()  # an updater waiting for a swap learns that it will not happen
        for kind, detail in self.source.events():
            self._event(kind, detail)
        self._publish(self.topics.metrics, self.metrics(started), qos=0, persist=False)
        self._event("stopped", {"reason": ended_by, "frames": self.stats.frames, "published": self.stats.published})
        if self.status_stream is not None and st.status_interval_s:
            self._status_line()
            self.status_stream.write("\n")
        s = self.stats
        s.elapsed_s = time.monotonic() - started
        s.fps = s.frames / s.elapsed_s if s.elapsed_s > 0 else 0.0
        s.dropped_frames = int(getattr(self.source, "dropped", 0))
        s.latency_p50_ms = _pct(self._lat, 50) if self._lat else None
        s.latency_p95_ms = _pct(self._lat, 95) if self._lat else None
        s.inference_p50_ms = _pct(self._inf, 50) if self._inf else None
        s.ended_by = ended_by
        logger.info("run %s ended (%s): %d frames, %d results, %d samples, %.1f fps", self.run_id, ended_by,
                    s.frames, s.published, s.samples, s.fps)
        return s

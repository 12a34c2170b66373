"""``run(config)``: the library twin of ``edge-classify`` (builds the parts, runs the pipeline)."""
from __future__ import annotations

import logging
import threading
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, TextIO

import cv2

from . import __version__
from .bundle import BundleError, load_manifest
from .config import Config, PreprocessSettings
from .errors import ConfigError, EdgeError, ManifestError, ModelError, RuntimeUnavailableError
from .homeassistant import discovery_messages
from .mqtt import MqttPublisher, Outbox, TlsSettings, credentials_from_env, parse_broker
from .pipeline import Capture, Classifier, Pipeline, PipelineSettings, RunStats, frame_time
from .runtime import Bundle, load_bundle
from .sources import VideoFileSource, open_source, parse_source
from .topics import Topics
from .uncertainty import CaptureSchedule, Sampler, SamplingPolicy
from .update import ModelStore, ModelUpdater, UpdatePolicy, load_public_key

logger = logging.getLogger(__name__)


def default_outbox_path(device_id: str) -> Path:
    return Path.home() / ".cache" / "edgeclf" / f"outbox-{device_id}.sqlite"


def default_store_dir(device_id: str) -> Path:
    return Path.home() / ".cache" / "edgeclf" / "models" / device_id


def update_policy(config: Config) -> UpdatePolicy:
    """``config.update`` as the updater's policy; an unusable public key is a :class:`ConfigError`."""
    u = config.update
    key = None
    if u.public_key:
        try:
            key = load_public_key(u.public_key)
        except ValueError as e:
            raise ConfigError(f"update.public_key: {e}. Model updates are applied only when signed: make the fleet's "
                              "key pair on the host (python -m train.publish keygen keys/fleet), copy keys/fleet.pub "
                              f"to {u.public_key} on the device (the private key stays on the host), or set "
                              "update.enabled: false") from e
    return UpdatePolicy(public_key=key, allow_unsigned=u.allow_unsigned, max_bytes=u.max_bytes, allow_input_change=u.allow_input_change,
                        fleet=u.fleet, timeout_s=u.timeout_s, max_age_s=u.max_age_s)


def ha_discovery(config: Config, topics: Topics, manifest=None) -> list:
    """Home Assistant discovery messages for the running model, or [] when discovery is off."""
    if not config.homeassistant.enabled:
        return []
    return discovery_messages(topics, model_name=manifest.name if manifest else "",
                              model_version=manifest.version if manifest else "", sw_version=__version__,
                              discovery_prefix=config.homeassistant.discovery_prefix,
                              regions=list(config.preprocess.regions or ()))


def make_publisher(config: Config, topics: Topics, bundle: Bundle | None = None) -> MqttPublisher:
    """A started-on-enter publisher for ``config.mqtt`` (status LWT, HA discovery as birth messages)."""
    m = config.mqtt
    host, port = parse_broker(m.broker)
    user, password = credentials_from_env(m.username_env, m.password_env)
    tls = TlsSettings(m.tls.ca_certs, m.tls.certfile, m.tls.keyfile, m.tls.insecure) if m.tls.enabled else None
    birth = ha_discovery(config, topics, bundle.manifest if bundle else None)
    outbox = Outbox(m.outbox_path or default_outbox_path(config.device_id), m.outbox_max_messages,
                    m.outbox_commit_interval_s)
    try:
        return MqttPublisher(host, port, m.client_id or f"edgeclf-{config.device_id}", status_topic=topics.status,
                             birth=birth, outbox=outbox, tls=tls, username=user, password=password,
                             keepalive=m.keepalive, reconnect_min_s=m.reconnect_min_s, reconnect_max_s=m.reconnect_max_s,
                             clean_session=not m.persistent_session)
    except Exception:
        outbox.close()
        raise


def capture_clock(source) -> Callable[[Any], float]:
    """Capture mode's clock for frames of ``source``: a video file's own (frame number / its fps), so it
    captures by the video's time however fast it is decoded (``fps_cap`` or none); else the frames'
    capture time (cameras, streams, image folders)."""
    if isinstance(source, VideoFileSource) and source.fps > 0:
        fps = source.fps
        return lambda frame: frame.frame_id / fps
    return frame_time


def capture_regions(pp: PreprocessSettings) -> dict[str | None, list[float] | None]:
    """What a capture without a model sends of a frame: each named region, else the roi, else the frame."""
    if pp.regions:
        return {name: r.roi for name, r in pp.regions.items()}
    return {None: pp.roi}


@contextmanager
def _config_field(field: str) -> Iterator[None]:
    """A ``ValueError`` from checking a user's setting becomes a :class:`ConfigError` naming the field.

    Only around the calls that check config values: a ``ValueError`` anywhere else is a bug (exit 1).
    """
    try:
        yield
    except ConfigError:
        raise
    except ValueError as e:
        if isinstance(e, EdgeError):
            raise
        raise ConfigError(f"{field}: {e}") from e


SMALL_INPUT = 64 * 64  # pixels: a model this small runs faster on one thread than with a pool


def interpreter_threads(bundle_dir: str | Path, configured: int | None) -> int | None:
    """``configured``, else the bundle's ``num_threads``, else 1 for a small input (:data:`SMALL_INPUT`),
    else None (the runtime's default). An unreadable manifest is load_bundle's to report."""
    if configured is not None:
        return configured
    path = Path(bundle_dir)
    try:
        manifest = load_manifest(path.parent if path.suffix == ".tflite" else path)
    except (BundleError, OSError):
        return None
    if manifest.num_threads is not None:
        return manifest.num_threads
    h, w = manifest.input.shape[1:3]
    return 1 if h * w <= SMALL_INPUT else None


def run(config: Config, stop: threading.Event | None = None, status_stream: TextIO | None = None) -> RunStats:
    """Classify frames from ``config.source`` and publish them until the source ends, ``max_frames``
    is reached, or ``stop`` is set. Raises the :mod:`sdk.errors` classes for bad input."""
    if not config.source:
        raise ConfigError("no frame source: set source (camera:N, video:PATH, rtsp://URL, images:DIR) "
                          "or pass --camera/--video/--rtsp/--images")
    rt = config.runtime
    with _config_field("source"):
        parse_source(config.source)

    cv2.setNumThreads(rt.opencv_threads)

    def make_classifier(path) -> Classifier:
        bundle = load_bundle(path, rt.delegate, interpreter_threads(path, rt.num_threads), rt.edgetpu_device)
        pp = config.preprocess
        regions = {name: (r.roi, r.resize if r.resize != "auto" else pp.resize)
                   for name, r in pp.regions.items()} if pp.regions else None
        with _config_field("preprocess"):
            return Classifier(bundle, pp.mode, pp.roi, pp.invert, config.top_k, config.threshold,
                              resize=pp.resize, regions=regions)

    u = config.update
    configured = config.model  # None: no model configured (capture mode until an update brings one)
    updates = u.enabled and config.mqtt.enabled
    policy = update_policy(config) if updates else None  # a bad key fails now, not at the first update
    store = ModelStore(u.store_dir or default_store_dir(config.device_id), u.keep) if u.enabled else None
    model_path = store.startup_model(configured) if store is not None else \
        (Path(configured) if configured is not None else None)
    classifier: Classifier | None = None
    if model_path is not None:
        try:
            classifier = make_classifier(model_path)
        except (ManifestError, ModelError, RuntimeUnavailableError) as e:
            if store is None or (configured is not None and model_path == Path(configured)):
                raise
            store.fall_back(str(e))
            classifier = make_classifier(configured) if configured is not None else None
    if classifier is None:
        logger.warning("no model: capture mode (a frame every %g s to the sample topic, no results)%s",
                       config.sampling.capture_every_s,
                       "; the first model published to this device's model/set topic is installed and swapped in"
                       if updates else "; model updates are off (update.enabled or mqtt.enabled is false)")
    bundle = classifier.bundle if classifier is not None else None
    topics = Topics(config.device_id, config.mqtt.topic_prefix)
    s = config.sampling
    sampler = Sampler(SamplingPolicy(
        enabled=s.enabled, min_confidence=s.min_confidence, min_margin=s.min_margin, max_entropy=s.max_entropy,
        audit_fraction=s.audit_fraction, per_minute=s.per_minute, per_hour=s.per_hour,
        dedup_distance=s.dedup_distance, image_format=s.image_format, jpeg_quality=s.jpeg_quality,
        max_side=s.max_side, max_bytes=s.max_bytes, model_input_format=s.model_input_format,
        model_input_max_bytes=s.model_input_max_bytes)) if s.enabled or s.capture_every_s is not None else None
    settings = PipelineSettings(
        publish_mode=config.publish.mode, min_interval_ms=config.publish.min_interval_ms,
        result_qos=config.publish.result_qos, sample_qos=s.qos, metrics_interval_s=config.metrics_interval_s,
        status_interval_s=config.status_interval_s if status_stream is not None else 0.0,
        max_frames=config.max_frames)
    cam = config.camera
    with ExitStack() as stack:
        with _config_field("camera"):
            opened = open_source(
            config.source, loop=config.loop, fps_cap=config.fps_cap, width=cam.width, height=cam.height,
            camera_fps=cam.fps, backend=cam.backend, backoff_min_s=cam.reconnect_min_s,
            backoff_max_s=cam.reconnect_max_s, open_timeout_s=cam.open_timeout_s, read_timeout_s=cam.read_timeout_s)
        source = stack.enter_context(opened)
        publisher = None
        if config.mqtt.enabled:
            publisher = make_publisher(config, topics, bundle)
            stack.callback(publisher.close, config.mqtt.flush_timeout_s)
        capture = Capture(CaptureSchedule(s.capture_every_s), capture_clock(source),
                          capture_regions(config.preprocess)) if s.capture_every_s is not None else None
        pipeline = Pipeline(source, classifier, publisher, topics, settings, sampler, status_stream, capture=capture)
        if publisher is not None:
            # subscribe before connecting: a persistent session delivers at once
            if updates and store is not None:
                updater = ModelUpdater(topics=topics, publisher=publisher, target=pipeline,
                                       make_classifier=make_classifier, store=store, configured_model=configured,
                                       policy=policy, run_id=pipeline.run_id,
                                       on_model_change=lambda m: publisher.set_birth(ha_discovery(config, topics, m)))
                updater.start()
                stack.callback(updater.close)  # closed before the publisher: its last state gets flushed
            publisher.start()
        stats = pipeline.run(stop)
    # checked after the publisher closed: a short run may end before the first handshake did
    if publisher is not None and publisher.fatal is not None:
        raise publisher.fatal  # what was classified stays queued in the outbox for the next start
    if publisher is not None:
        stats.queued, stats.delivered = publisher.queued, publisher.delivered
        stats.undelivered, stats.outbox = len(publisher.outbox), publisher.outbox.path
    return stats

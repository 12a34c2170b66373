"""``run(config)``: the library twin of ``edge-classify`` (builds the parts, runs the pipeline)."""
from __future__ import annotations

import logging
import threading
from contextlib import ExitStack
from pathlib import Path
from typing import TextIO

from . import __version__
from .config import Config
from .errors import ConfigError
from .homeassistant import discovery_messages
from .mqtt import MqttPublisher, Outbox, TlsSettings, credentials_from_env, parse_broker
from .pipeline import Classifier, Pipeline, PipelineSettings, RunStats
from .runtime import Bundle, load_bundle
from .sources import open_source
from .topics import Topics
from .uncertainty import Sampler, SamplingPolicy

logger = logging.getLogger(__name__)


def default_outbox_path(device_id: str) -> Path:
    return Path.home() / ".cache" / "edgeclf" / f"outbox-{device_id}.sqlite"


def make_publisher(config: Config, topics: Topics, bundle: Bundle | None = None) -> MqttPublisher:
    """A started-on-enter publisher for ``config.mqtt`` (status LWT, HA discovery as birth messages)."""
    m = config.mqtt
    host, port = parse_broker(m.broker)
    user, password = credentials_from_env(m.username_env, m.password_env)
    tls = TlsSettings(m.tls.ca_certs, m.tls.certfile, m.tls.keyfile, m.tls.insecure) if m.tls.enabled else None
    birth = []
    if config.homeassistant.enabled:
        birth = discovery_messages(topics, model_name=bundle.manifest.name if bundle else "",
                                   sw_version=__version__, discovery_prefix=config.homeassistant.discovery_prefix)
    outbox = Outbox(m.outbox_path or default_outbox_path(config.device_id), m.outbox_max_messages)
    try:
        return MqttPublisher(host, port, m.client_id or f"edgeclf-{config.device_id}", status_topic=topics.status,
                             birth=birth, outbox=outbox, tls=tls, username=user, password=password,
                             keepalive=m.keepalive, reconnect_min_s=m.reconnect_min_s, reconnect_max_s=m.reconnect_max_s)
    except Exception:
        outbox.close()
        raise


def run(config: Config, stop: threading.Event | None = None, status_stream: TextIO | None = None) -> RunStats:
    """Classify frames from ``config.source`` and publish them until the source ends, ``max_frames``
    is reached, or ``stop`` is set. Raises the :mod:`sdk.errors` classes for bad input."""
    if not config.source:
        raise ConfigError("no frame source: set source (camera:N, video:PATH, rtsp://URL, images:DIR) "
                          "or pass --camera/--video/--rtsp/--images")
    rt = config.runtime
    bundle = load_bundle(config.model, rt.delegate, rt.num_threads, rt.edgetpu_device)
    classifier = Classifier(bundle, config.preprocess.mode, config.preprocess.roi, config.preprocess.invert,
                            config.top_k, config.threshold)
    topics = Topics(config.device_id, config.mqtt.topic_prefix)
    s = config.sampling
    sampler = Sampler(SamplingPolicy(
        enabled=s.enabled, min_confidence=s.min_confidence, min_margin=s.min_margin, max_entropy=s.max_entropy,
        audit_fraction=s.audit_fraction, per_minute=s.per_minute, per_hour=s.per_hour,
        dedup_distance=s.dedup_distance, image_format=s.image_format, jpeg_quality=s.jpeg_quality,
        max_side=s.max_side, max_bytes=s.max_bytes)) if s.enabled else None
    settings = PipelineSettings(
        publish_mode=config.publish.mode, min_interval_ms=config.publish.min_interval_ms,
        result_qos=config.publish.result_qos, sample_qos=s.qos, metrics_interval_s=config.metrics_interval_s,
        status_interval_s=config.status_interval_s if status_stream is not None else 0.0,
        max_frames=config.max_frames)
    cam = config.camera
    with ExitStack() as stack:
        source = stack.enter_context(open_source(
            config.source, loop=config.loop, fps_cap=config.fps_cap, width=cam.width, height=cam.height,
            camera_fps=cam.fps, backend=cam.backend, backoff_min_s=cam.reconnect_min_s,
            backoff_max_s=cam.reconnect_max_s))
        publisher = None
        if config.mqtt.enabled:
            publisher = make_publisher(config, topics, bundle)
            stack.callback(publisher.close, config.mqtt.flush_timeout_s)
            publisher.start()
        pipeline = Pipeline(source, classifier, publisher, topics, settings, sampler, status_stream)
        return pipeline.run(stop)

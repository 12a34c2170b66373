"""Device configuration: pydantic, unknown keys rejected, every field described.

YAML file first (``firmware_configs/<device>.yaml``), then command-line flags override it.
Secrets (MQTT user name and password) come from environment variables named here.
"""
from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError
from .mqtt import DEFAULT_PASSWORD_ENV, DEFAULT_USERNAME_ENV
from .outbox import DEFAULT_COMMIT_INTERVAL_S
from .topics import DEFAULT_PREFIX, FLEET, check_region, is_segment


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _default_device_id() -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname()) or "edge-device"


class CameraSettings(_Strict):
    width: int | None = Field(640, ge=16, description="Requested capture width in pixels (camera only).")
    height: int | None = Field(480, ge=16, description="Requested capture height in pixels (camera only).")
    fps: float | None = Field(None, gt=0, description="Requested capture rate of the camera driver.")
    backend: Literal["auto", "v4l2", "gstreamer", "ffmpeg"] = Field("auto", description="OpenCV capture backend.")
    reconnect_min_s: float = Field(0.5, gt=0, description="First delay before reopening a dropped camera/stream.")
    reconnect_max_s: float = Field(30.0, gt=0, description="Longest delay between reopen attempts (doubling backoff).")
    open_timeout_s: float = Field(
        10.0, gt=0, description="Give up connecting to a stream (RTSP/HTTP) after this long; the attempt "
                                "counts as failed and the next one follows the backoff.")
    read_timeout_s: float = Field(
        5.0, gt=0, description="A stream that sends no frame for this long is treated as dropped and reopened "
                               "(FFmpeg's own default is 30 s). Keep it above the stream's frame interval.")


class RuntimeSettings(_Strict):
    delegate: Literal["auto", "none", "xnnpack", "edgetpu", "gpu"] = Field(
        "auto", description="auto: Edge TPU for *_edgetpu models (or a bundle exported for it), CPU otherwise.")
    num_threads: int | None = Field(
        None, ge=1, description="Interpreter CPU threads (None: the bundle's; else 1 for a model whose input is at "
                                "most 64x64, whose thread pool costs more than it saves, and the runtime's default "
                                "for larger ones).")
    opencv_threads: int = Field(
        1, ge=0, description="OpenCV's worker threads for one frame's colour conversion and resizing (0: OpenCV's "
                             "default, all cores). 1 by default: decoding already runs on another core, and "
                             "OpenCV's pool spinning beside it cost more CPU per frame than it saved.")
    edgetpu_device: str | None = Field(None, description="Edge TPU to use: usb, pci, usb:0 ... (None: the first found).")


def roi_problem(roi: list[float]) -> str | None:
    """Why ``[x, y, w, h]`` is no region of interest, or None. Fractions of the frame when all four
    values are within 0..1, else whole pixels (x, y >= 0; w, h >= 1)."""
    if all(0 <= v <= 1 for v in roi):
        x, y, w, h = roi
        if not (x < 1 and y < 1 and w > 0 and h > 0 and x + w <= 1 + 1e-9 and y + h <= 1 + 1e-9):
            return ("as fractions of the frame, [x, y, w, h] needs x, y in [0, 1), w, h in (0, 1] and the region "
                    "inside the frame (x + w <= 1, y + h <= 1)")
        return None
    if any(v != int(v) for v in roi) or min(roi[:2]) < 0 or min(roi[2:]) < 1:
        return ("in pixels, [x, y, w, h] needs whole numbers with x, y >= 0 and w, h >= 1 "
                "(or give all four as fractions of the frame, 0..1)")
    return None


class RegionSettings(_Strict):
    roi: list[float] = Field(
        ..., min_length=4, max_length=4,
        description="[x, y, w, h]: fractions of the frame when all four are within 0..1, else pixels.")
    resize: Literal["auto", "stretch", "centre_crop", "letterbox"] = Field(
        "auto", description="How the region is fitted to the model input (auto: the preprocess section's).")

    @field_validator("roi")
    @classmethod
    def _roi_valid(cls, v):
        problem = roi_problem(v)
        if problem:
            raise ValueError(problem)
        return v


class PreprocessSettings(_Strict):
    mode: Literal["auto", "plain", "digit"] = Field(
        "auto", description="auto: what the bundle's manifest says; digit: find, crop and centre a handwritten digit.")
    roi: list[float] | None = Field(
        None, min_length=4, max_length=4,
        description="Region of interest [x, y, w, h]: fractions of the frame when all four are within 0..1, "
                    "else pixels (e.g. [120, 40, 200, 200]).")
    resize: Literal["auto", "stretch", "centre_crop", "letterbox"] = Field(
        "auto", description="How the region (or frame) is fitted to the model input; auto: the manifest's "
                            "input.resize (what the model was trained with).")
    regions: dict[str, RegionSettings] | None = Field(
        None, description="Several named regions of the frame, each classified on its own, its results published on "
                          "<prefix>/v1/<device>/<name>/result; replaces roi.")
    invert: Literal["auto", "never", "always"] = Field(
        "auto", description="Flip ink polarity to match the model (auto: judged from the frame, plain mode).")

    @field_validator("roi")
    @classmethod
    def _roi_valid(cls, v):
        problem = roi_problem(v) if v is not None else None
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("regions")
    @classmethod
    def _region_names(cls, v):
        for name in v or {}:
            check_region(name)
        if v is not None and not v:
            raise ValueError("regions is empty: name at least one region, or leave it out")
        return v

    @model_validator(mode="after")
    def _roi_or_regions(self) -> "PreprocessSettings":
        if self.roi is not None and self.regions:
            raise ValueError("give either roi (one region) or regions (several named ones), not both")
        return self


class PublishSettings(_Strict):
    mode: Literal["every", "change"] = Field(
        "every", description="every: one result per frame; change: only when the top-1 label changes.")
    min_interval_ms: int = Field(0, ge=0, description="At most one result per this many ms (0: no limit).")
    result_qos: Literal[0, 1] = Field(1, description="QoS of result messages (1: store-and-forward covers broker outages).")


class TlsConfig(_Strict):
    enabled: bool = Field(False, description="Connect with TLS.")
    ca_certs: str | None = Field(None, description="CA bundle that signed the broker's certificate (None: system CAs).")
    certfile: str | None = Field(None, description="Client certificate (PEM) for mutual TLS.")
    keyfile: str | None = Field(None, description="Client private key (PEM) for mutual TLS.")
    insecure: bool = Field(False, description="Skip the broker host name check (lab only).")


class MqttSettings(_Strict):
    enabled: bool = Field(True, description="Publish over MQTT (false: classify and log only).")
    broker: str = Field("localhost:1883", description="Broker HOST:PORT.")
    topic_prefix: str = Field(DEFAULT_PREFIX, description="First topic level(s); topics are <prefix>/v1/<device>/...")
    client_id: str | None = Field(None, description="MQTT client id (None: edgeclf-<device_id>).")
    keepalive: int = Field(30, ge=5, le=3600, description="MQTT keepalive in seconds.")
    username_env: str | None = Field(DEFAULT_USERNAME_ENV, description="Environment variable holding the user name.")
    password_env: str | None = Field(DEFAULT_PASSWORD_ENV, description="Environment variable holding the password.")
    tls: TlsConfig = Field(default_factory=TlsConfig, description="TLS settings.")
    outbox_path: str | None = Field(
        None, description="sqlite file of the store-and-forward queue (None: ~/.cache/edgeclf/outbox-<device>.sqlite; "
                          "':memory:' for none on disk).")
    outbox_max_messages: int = Field(10000, ge=10, description="Queue bound; the oldest messages go first when full.")
    outbox_commit_interval_s: float = Field(
        DEFAULT_COMMIT_INTERVAL_S, ge=0, le=10,
        description="Group commit: a queued message not acknowledged within this many seconds is written to the "
                    "outbox file (all due ones in one transaction); a SIGKILL or power cut loses at most the "
                    "messages of this last window. 0: every message written before the next frame.")
    reconnect_min_s: float = Field(0.5, gt=0, description="First delay before reconnecting to the broker.")
    reconnect_max_s: float = Field(30.0, gt=0, description="Longest reconnect delay (doubling backoff).")
    flush_timeout_s: float = Field(5.0, ge=0, description="On exit, wait this long for queued messages to be acknowledged.")
    persistent_session: bool = Field(
        False, description="Keep the MQTT session on the broker (clean_session=False, MQTT 3.1.1): model updates "
                           "published while the device is offline arrive when it reconnects. The broker then holds "
                           "them (memory, its max_queued_messages limit) until the device returns.")


class SamplingSettings(_Strict):
    enabled: bool = Field(True, description="Send frames the model is unsure of to <prefix>/v1/<device>/sample "
                                            "(the uncertainty selection only: capture_every_s is its own switch).")
    capture_every_s: float | None = Field(
        None, gt=0, description="Capture mode: also send one frame every this many seconds as a sample (reason "
                                "capture), with or without a model, whatever enabled says; not rate-limited (this is "
                                "their rate) but de-duplicated. The clock is a video file's own (frame number / its "
                                "fps), else the frames' capture time; the first frame is always sent.")
    min_confidence: float = Field(0.6, ge=0, le=1, description="Select when the top-1 score is below this.")
    min_margin: float = Field(0.2, ge=0, le=1, description="Select when top-1 minus top-2 is below this.")
    max_entropy: float = Field(0.5, ge=0, le=1, description="Select when the normalised entropy is above this.")
    audit_fraction: float = Field(0.0, ge=0, le=1, description="Share of confident frames sent anyway (random audit).")
    per_minute: int = Field(10, ge=0, description="At most this many samples per minute.")
    per_hour: int = Field(200, ge=0, description="At most this many samples per hour.")
    dedup_distance: int = Field(6, ge=0, le=64, description="Perceptual-hash Hamming distance under which frames are duplicates.")
    image_format: Literal["png", "jpeg"] = Field("jpeg", description="Encoding of the sampled frame.")
    jpeg_quality: int = Field(85, ge=10, le=100, description="Starting JPEG quality (lowered to meet max_bytes).")
    max_side: int = Field(320, ge=16, description="Longer side of the sampled image in pixels.")
    max_bytes: int = Field(48000, ge=1000, le=10_000_000, description="Size cap of the encoded image.")
    model_input_format: Literal["png", "jpeg"] = Field(
        "png", description="Encoding of the model input sent with each sample (png: exactly what the model saw).")
    model_input_max_bytes: int = Field(
        200_000, ge=1000, le=10_000_000,
        description="Size cap of the model input; a PNG over it is sent as JPEG, one that no JPEG fits is left out.")
    qos: Literal[0, 1] = Field(1, description="QoS of sample messages.")


class UpdateSettings(_Strict):
    enabled: bool = Field(True, description="Accept model updates on <prefix>/v1/<device>/model/set (needs MQTT).")
    public_key: str | None = Field(
        None, description="ed25519 public key file (PEM, or the raw 32-byte key in base64; made by `python -m "
                          "train.publish keygen`). Only updates and rollbacks signed with its private key are "
                          "applied. Without it every update is refused, unless allow_unsigned is true.")
    allow_unsigned: bool = Field(
        False, description="Apply unsigned updates when no public_key is set (lab only: anyone who may publish to "
                           "the model/set topics can then replace the model). A warning is logged at start.")
    store_dir: str | None = Field(
        None, description="Where received bundles and active.json live (None: ~/.cache/edgeclf/models/<device_id>).")
    max_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="Refuse update archives larger than this (bytes); "
                                                                  "the extracted bundle may be at most 4x as large.")
    keep: int = Field(3, ge=2, le=20, description="Received bundles kept on disk (the active and the previous one always).")
    allow_input_change: bool = Field(
        False, description="Accept a model whose input shape or colour differs from the running one.")
    fleet: bool = Field(True, description="Also accept updates on the fleet-wide topic <prefix>/v1/fleet/model/set.")
    timeout_s: float = Field(120.0, gt=0, description="Drop an incomplete update when no chunk arrived for this long.")
    max_age_s: float = Field(
        0.0, ge=0, description="With public_key: refuse signed commands created longer ago than this by the device's "
                               "clock (0: no limit; signed commands must always be newer than the last one accepted).")


    @model_validator(mode="after")
    def _signing(self) -> "UpdateSettings":
        if self.allow_unsigned and self.public_key:
            raise ValueError("allow_unsigned: true contradicts public_key (with a key, only signed updates are "
                             "applied); remove one of them")
        return self


class HomeAssistantSettings(_Strict):
    enabled: bool = Field(False, description="Publish retained Home Assistant MQTT discovery configs.")
    discovery_prefix: str = Field("homeassistant", description="Home Assistant's discovery prefix.")


class Config(_Strict):
    """Everything ``edge-classify`` / :func:`sdk.run` needs."""

    device_id: str = Field(default_factory=_default_device_id, description="Device name in topics (letters, digits, _ - .).")
    source: str | None = Field(None, description="camera:N | video:PATH | rtsp://URL | images:DIR.")
    loop: bool = Field(False, description="Start a video file or image folder over at its end.")
    fps_cap: float | None = Field(None, gt=0, description="Process at most this many frames per second.")
    max_frames: int | None = Field(None, ge=1, description="Stop after this many frames (benchmarks, tests).")
    model: str | None = Field(
        "models/current", description="Model bundle directory (manifest.json + model.tflite); null: no model, "
                                      "capture mode (needs sampling.capture_every_s; no results until a first model arrives "
                                      "signed on model/set, then kept across restarts).")
    top_k: int = Field(3, ge=1, description="How many classes each result lists.")
    threshold: float = Field(0.0, ge=0, le=1, description="Leave out classes scoring below this.")
    camera: CameraSettings = Field(default_factory=CameraSettings, description="Camera / stream capture.")
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings, description="Interpreter and delegate.")
    preprocess: PreprocessSettings = Field(default_factory=PreprocessSettings, description="Frame preparation.")
    publish: PublishSettings = Field(default_factory=PublishSettings, description="Which results are published.")
    mqtt: MqttSettings = Field(default_factory=MqttSettings, description="Broker connection and queue.")
    sampling: SamplingSettings = Field(default_factory=SamplingSettings, description="Uncertain-frame upload.")
    homeassistant: HomeAssistantSettings = Field(default_factory=HomeAssistantSettings, description="HA discovery.")
    update: UpdateSettings = Field(default_factory=UpdateSettings, description="Model updates over MQTT.")
    metrics_interval_s: float = Field(10.0, gt=0, description="Seconds between metrics heartbeats.")
    status_interval_s: float = Field(2.0, ge=0, description="Seconds between status lines on a terminal (0: off).")

    @field_validator("device_id")
    @classmethod
    def _device_id(cls, v: str) -> str:
        if not is_segment(v):
            raise ValueError("device_id may hold letters, digits, '_', '-', '.' only")
        if v == FLEET:
            raise ValueError(f"device_id {FLEET!r} is reserved for the fleet-wide topics; choose another name")
        return v

    @model_validator(mode="after")
    def _model_or_capture(self) -> "Config":
        if self.model is None and self.sampling.capture_every_s is None:
            raise ValueError("model is null (no model) but sampling.capture_every_s is not set: without a model the "
                             "device can only capture frames for labelling; set sampling.capture_every_s "
                             "(--capture-every 5s) or give model a bundle directory")
        return self


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _format_errors(e: ValidationError, origin: str) -> str:
    lines = [f"{origin}: invalid configuration:"]
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = "unknown key (not allowed)" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def config_from_dict(data: dict[str, Any], origin: str = "config") -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, origin)) from e


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: malformed YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of settings, not {type(data).__name__}")
    return data


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """YAML file (optional) with ``overrides`` (nested dict, e.g. from flags) applied on top."""
    data = read_yaml(path) if path else {}
    return config_from_dict(_merge(data, overrides or {}), str(path) if path else "flags")


def resolved_yaml(config: Config) -> str:
    """The resolved configuration as YAML (written next to what it produced)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)

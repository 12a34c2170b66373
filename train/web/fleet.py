"""What the studio knows about the fleet: every device seen on ``<prefix>/v1/+/status``, ``metrics``
and ``model/state`` (docs/mqtt.md), kept up to date by one MQTT subscriber.

``status`` is retained with the device's last will, so a device that dies shows ``offline`` as soon
as the broker notices (1.5 keep-alives), and one that exits cleanly at once. A device that is
``online`` but has sent nothing for ``stale_after_s`` shows as ``stale``. Every change bumps
:attr:`FleetMonitor.version`, which the page's event stream watches.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import paho.mqtt.client as mqtt

from sdk.mqtt import TlsSettings
from sdk.topics import DEFAULT_PREFIX, all_devices, check_prefix, device_of

logger = logging.getLogger(__name__)

KINDS = ("status", "metrics", "model/state")


@dataclass
class DeviceView:
    """One device as the fleet page shows it."""

    device: str
    status: str = "unknown"                 # online | offline | unknown (no status seen yet)
    status_at: float | None = None
    last_seen: float | None = None          # last message of any kind (wall clock of the studio)
    run_id: str | None = None
    fps: float | None = None
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    queue_depth: int | None = None
    queued: int | None = None
    delivered: int | None = None
    frames: int | None = None
    samples: int | None = None
    last_label: str | None = None
    last_score: float | None = None
    model_name: str | None = None
    model_version: str | None = None
    previous_version: str | None = None
    last_update: dict | None = None         # the model/state ``last_update`` (outcome of the last update)
    errors: list[str] = field(default_factory=list)

    def state(self, now: float, stale_after_s: float) -> str:
        if self.status == "online" and self.last_seen is not None and now - self.last_seen > stale_after_s:
            return "stale"
        return self.status

    def as_json(self, now: float, stale_after_s: float) -> dict[str, Any]:
        out = asdict(self)
        out["state"] = self.state(now, stale_after_s)
        out["seen_s_ago"] = None if self.last_seen is None else round(now - self.last_seen, 1)
        return out


class FleetMonitor:
    """An MQTT subscriber holding a :class:`DeviceView` per device; a context manager.

    Thread-safe: paho's thread writes, the web server reads :meth:`snapshot`.
    """

    def __init__(self, host: str, port: int = 1883, *, prefix: str = DEFAULT_PREFIX, client_id: str | None = None,
                 tls: TlsSettings | None = None, username: str | None = None, password: str | None = None,
                 keepalive: int = 30, stale_after_s: float = 30.0):
        self.host, self.port, self.prefix = host, port, check_prefix(prefix)
        self.stale_after_s = stale_after_s
        self.devices: dict[str, DeviceView] = {}
        self.version = 0
        self.connected = False
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or "", protocol=mqtt.MQTTv5)
        c.reconnect_delay_set(0.5, 10.0)
        self._handshakes = tls.apply(c) if tls is not None else None
        if username is not None:
            c.username_pw_set(username, password)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_subscribe = lambda *a: self._subscribed.set()
        self.client = c
        self.keepalive = keepalive

    def start(self) -> "FleetMonitor":
        self.client.connect_async(self.host, self.port, keepalive=self.keepalive)
        self.client.loop_start()
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> "FleetMonitor":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def wait_subscribed(self, timeout: float | None = None) -> bool:
        return self._subscribed.wait(timeout)

    def snapshot(self) -> dict[str, Any]:
        """``{"version", "connected", "broker", "error", "devices": [...]}``, devices by id."""
        now = time.time()
        with self._lock:
            return {
                "version": self.version, "connected": self.connected, "broker": f"{self.host}:{self.port}",
                "error": self.last_error,
                "devices": [self.devices[d].as_json(now, self.stale_after_s) for d in sorted(self.devices)],
            }

    def device_ids(self) -> list[str]:
        with self._lock:
            return sorted(self.devices)

    # -- paho callbacks -------------------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._changed(error=f"broker {self.host}:{self.port} refused the connection: {reason_code}")
            return
        client.subscribe([(all_devices(kind, self.prefix), 1) for kind in KINDS])
        with self._lock:
            self.connected = True
            self.last_error = None
            self.version += 1

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._changed(error=f"lost the broker {self.host}:{self.port} ({reason_code}); reconnecting", connected=False)

    def _changed(self, *, error: str | None = None, connected: bool | None = None) -> None:
        with self._lock:
            if error is not None:
                self.last_error = error
            if connected is not None:
                self.connected = connected
            self.version += 1

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        for kind in KINDS:
            device = device_of(msg.topic, kind, self.prefix)
            if device is not None:
                break
        else:
            return
        try:
            self._apply(device, kind, msg.payload)
        except (ValueError, TypeError, KeyError, AttributeError) as e:  # a bad message must not stop the monitor
            logger.warning("%s: unreadable %s message: %s", device, kind, e)
            with self._lock:
                view = self.devices.setdefault(device, DeviceView(device))
                view.errors = (view.errors + [f"{kind}: {e}"])[-5:]
                self.version += 1

    def _apply(self, device: str, kind: str, payload: bytes) -> None:
        now = time.time()
        if kind == "status":
            status = payload.decode("utf-8", "replace").strip()
            if not status:  # a cleared retained status: the device is gone from the broker
                with self._lock:
                    if self.devices.pop(device, None) is not None:
                        self.version += 1
                return
            data = None
        else:
            data = json.loads(payload)
        with self._lock:
            view = self.devices.setdefault(device, DeviceView(device))
            if kind == "status":
                view.status = status if status in ("online", "offline") else "unknown"
                view.status_at = now
            elif kind == "metrics":
                view.run_id = data.get("run_id")
                view.fps = data.get("fps")
                lat = data.get("latency_ms") or {}
                view.latency_p50_ms, view.latency_p95_ms = lat.get("p50"), lat.get("p95")
                for name in ("queue_depth", "queued", "delivered", "frames", "samples", "last_label", "last_score"):
                    setattr(view, name, data.get(name))
                model = data.get("model") or {}
                view.model_name, view.model_version = model.get("name"), model.get("version")
            else:
                active = data.get("active") or {}
                view.model_name, view.model_version = active.get("name"), active.get("version")
                view.previous_version = (data.get("previous") or {}).get("version")
                view.last_update = data.get("last_update")
            if kind != "status" or status == "online":
                view.last_seen = now
            self.version += 1

"""Send a model bundle to devices over MQTT, or roll them back: the library behind ``python -m train.publish``.

Needs no TensorFlow (only ``sdk`` and paho-mqtt; ``cryptography`` to sign)::

    publish_bundle("runs/X/bundles/rpi", "mqtt.local:1883", devices=["rpi4-1"], sign_key="keys/edgeclf.key", wait_s=60)
    rollback("mqtt.local:1883", fleet=True, sign_key="keys/edgeclf.key")

The command line (:mod:`train.publish`) takes the same arguments; keys are made and loaded by
:mod:`train.loop.keys`. The wire format is in docs/mqtt.md ("Model updates") and :mod:`sdk.update`.
Bad input raises :class:`train.errors.UsageError`, a broker that cannot be reached
:class:`train.errors.BrokerUnreachableError`, a refused TLS certificate the :mod:`sdk.errors`
error (``BrokerCertificateError``, ``BrokerHostnameError``); each carries its exit code.
"""
from __future__ import annotations

import json
import logging
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from pydantic import ValidationError

from sdk.bundle import BundleError, verify_bundle
from sdk.errors import MqttConfigError
from sdk.mqtt import MqttPublisher, Outbox, TlsSettings, parse_broker
from sdk.topics import DEFAULT_PREFIX, FLEET, Topics, all_devices, device_of, fleet_model_set
from sdk.update import (
    DEFAULT_CHUNK_SIZE,
    MAX_CHUNK_SIZE,
    Signer,
    encode,
    make_rollback,
    make_update,
    pack_bundle,
    validation_errors,
)
from train.errors import BrokerUnreachableError, UsageError
from train.loop.keys import load_private_key, signer

logger = logging.getLogger(__name__)

GOOD = ("applied", "rolled_back", "sent")

__all__ = ["DeviceOutcome", "pack_bundle", "parse_size", "publish_bundle", "rollback"]


@dataclass
class DeviceOutcome:
    """What one device reported (``applied``, ``refused``, ``rolled_back``), ``no_answer``
    within the wait, or ``sent`` when not waiting (``device`` is ``fleet`` then for a fleet send)."""

    device: str
    outcome: str
    reason: str | None = None
    version: str | None = None
    duration_s: float | None = None
    update_id: str | None = None

    @property
    def ok(self) -> bool:
        return self.outcome in GOOD

    def line(self) -> str:
        if self.outcome in ("applied", "rolled_back"):
            return f"{self.device}: {self.outcome} (version {self.version}, {self.duration_s:.2f} s)"
        if self.outcome == "sent":
            return f"{self.device}: sent (update {self.update_id})"
        return f"{self.device}: {self.outcome.replace('_', ' ')}: {self.reason}"


def parse_size(text: str | int) -> int:
    """``262144``, ``256k``, ``1m`` (KiB / MiB) -> bytes."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+)\s*([kKmM]?)[iI]?[bB]?\s*", str(text))
    if not m:
        raise UsageError(f"invalid size {text!r}; use bytes or a k/m suffix, e.g. 256k")
    return int(m.group(1)) * {"": 1, "k": 1024, "m": 1024 * 1024}[m.group(2).lower()]


def _targets(devices: Sequence[str] | None, fleet: bool, prefix: str) -> list[tuple[str, str]]:
    """``(label, set topic)`` per target."""
    if bool(devices) == bool(fleet):
        raise UsageError("name the devices (--device ID ...) or --fleet, not both and not neither")
    try:
        if fleet:
            return [(FLEET, fleet_model_set(prefix))]
        out = []
        for d in dict.fromkeys(devices):  # de-duplicated, in order
            if d == FLEET:
                raise ValueError(f"{FLEET!r} is not a device id; use --fleet for every device")
            out.append((d, Topics(d, prefix).model_set))
        return out
    except ValueError as e:
        raise UsageError(str(e)) from e


def _signer(sign_key: Any) -> Signer | None:
    """``sign_key`` (a private key file, a loaded key or ``None``) as the signer of the commands."""
    if sign_key is None:
        return None
    if isinstance(sign_key, (str, Path)):
        try:
            sign_key = load_private_key(sign_key)
        except ValueError as e:
            raise UsageError(str(e)) from e
    return signer(sign_key)


class _Session:
    """A connected publisher plus a listener for the devices' ``model/state``."""

    def __init__(self, broker: str, prefix: str, *, tls: TlsSettings | None, username: str | None,
                 password: str | None, client_id: str | None, connect_timeout_s: float):
        try:
            host, port = parse_broker(broker)
        except MqttConfigError as e:
            raise UsageError(str(e)) from e
        self.prefix = prefix
        self.states: dict[str, dict] = {}
        self.cond = threading.Condition()
        try:
            self.pub = MqttPublisher(host, port, client_id or "", outbox=Outbox(":memory:", 1_000_000), tls=tls,
                                     username=username, password=password, reconnect_min_s=0.2, reconnect_max_s=2.0)
        except MqttConfigError as e:
            raise UsageError(str(e)) from e
        self.connect_timeout_s = connect_timeout_s
        self.address = f"{host}:{port}"

    def _on_state(self, topic: str, payload: bytes) -> None:
        device = device_of(topic, "model/state", self.prefix)
        if device is None:
            logger.warning("model/state on %r, which names no valid device: ignored", topic)
            return
        try:
            msg = json.loads(payload) if payload else None
        except ValueError:
            logger.warning("unreadable model/state from %s", device)
            return
        with self.cond:
            if msg is None:
                self.states.pop(device, None)
            else:
                self.states[device] = msg
            self.cond.notify_all()

    def __enter__(self) -> "_Session":
        return self

    def __exit__(self, *exc) -> None:
        self.pub.close(timeout=2.0)

    def connect(self, watch: Sequence[str] | None, watch_all: bool) -> None:
        if watch_all:
            self.pub.subscribe(all_devices("model/state", self.prefix), 1, self._on_state)
        for d in watch or ():
            self.pub.subscribe(Topics(d, self.prefix).model_state, 1, self._on_state)
        self.pub.start()
        if not self.pub.wait_connected(self.connect_timeout_s):
            if self.pub.fatal is not None:  # the broker's TLS certificate was refused (exit 10, 11)
                raise self.pub.fatal
            why = f" ({self.pub.last_error})" if self.pub.last_error else ""
            raise BrokerUnreachableError(f"cannot connect to the MQTT broker {self.address} within "
                              f"{self.connect_timeout_s:g} s{why}")

    def send(self, msgs: Sequence[tuple[str, bytes]], timeout_s: float) -> None:
        for topic, payload in msgs:
            self.pub.publish(topic, payload, qos=1)
        if not self.pub.flush(timeout_s):
            raise BrokerUnreachableError(f"the broker {self.address} did not acknowledge {self.pub.queue_depth} of "
                              f"{len(msgs)} messages within {timeout_s:g} s")

    def wait(self, update_id: str, expected: list[str], wait_s: float, accept_others: bool) -> list[DeviceOutcome]:
        """Outcomes of ``update_id`` from ``expected`` (and from any device when ``accept_others``)."""
        end = time.monotonic() + wait_s

        def answered() -> dict[str, dict]:
            return {d: s["last_update"] for d, s in self.states.items()
                    if isinstance(s.get("last_update"), dict) and s["last_update"].get("update_id") == update_id}

        with self.cond:
            while True:
                done = answered()
                if all(d in done for d in expected) or time.monotonic() >= end:
                    break
                self.cond.wait(min(0.2, max(0.0, end - time.monotonic())))
        out = []
        for d in list(expected) + sorted(set(done) - set(expected) if accept_others else []):
            lu = done.get(d)
            if lu is None:
                out.append(DeviceOutcome(d, "no_answer", f"no model/state for update {update_id} within {wait_s:g} s",
                                         update_id=update_id))
            else:
                out.append(DeviceOutcome(d, lu["outcome"], lu.get("reason"), lu.get("version"), lu.get("duration_s"),
                                         update_id))
        return out


def _deliver(broker: str, prefix: str, targets: list[tuple[str, str]], build: Callable[[str, str], list],
             update_id: str, wait_s: float | None, fleet: bool, conn: dict, send_timeout_s: float | None,
             size: int) -> list[DeviceOutcome]:
    msgs = [m for to, set_topic in targets for m in build(to, set_topic)]  # one addressed command per target
    timeout = send_timeout_s if send_timeout_s is not None else 30.0 + size * len(targets) / 200_000
    with _Session(broker, prefix, **conn) as s:
        devices = [d for d, _ in targets if d != FLEET]
        s.connect(devices if wait_s is not None else None, watch_all=fleet and wait_s is not None)
        expected = devices
        if fleet and wait_s is not None:
            time.sleep(1.0)  # the retained model/state of every device that runs the updater
            with s.cond:
                expected = sorted(s.states)
            logger.info("fleet: waiting for %d devices that reported a model/state: %s", len(expected),
                        ", ".join(expected) or "(none)")
        s.send(msgs, timeout)
        logger.info("sent %d messages (update %s) to %s", len(msgs), update_id, ", ".join(t for _, t in targets))
        if wait_s is None:
            return [DeviceOutcome(d, "sent", update_id=update_id) for d, _ in targets]
        return s.wait(update_id, expected, wait_s, accept_others=fleet)


def _conn(tls: TlsSettings | None, username: str | None, password: str | None, client_id: str | None,
          connect_timeout_s: float) -> dict:
    return {"tls": tls, "username": username, "password": password, "client_id": client_id,
            "connect_timeout_s": connect_timeout_s}


def publish_bundle(bundle_dir: str | Path, broker: str, *, devices: Sequence[str] | None = None, fleet: bool = False,
                   prefix: str = DEFAULT_PREFIX, sign_key: Any = None, chunk_size: int | str = DEFAULT_CHUNK_SIZE,
                   wait_s: float | None = None, tls: TlsSettings | None = None, username: str | None = None,
                   password: str | None = None, client_id: str | None = None, connect_timeout_s: float = 10.0,
                   send_timeout_s: float | None = None, update_id: str | None = None) -> list[DeviceOutcome]:
    """Pack ``bundle_dir``, sign it (``sign_key``: a private key file or object) and send it with
    QoS 1 to ``devices`` or the fleet; returns one :class:`DeviceOutcome` per device (``sent``
    without ``wait_s``). Raises :class:`~train.errors.UsageError` or :class:`~train.errors.BrokerUnreachableError`."""
    targets = _targets(devices, fleet, prefix)
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise UsageError(f"{bundle_dir}: model bundle not found (a directory with manifest.json and model.tflite)")
    try:
        manifest = verify_bundle(bundle_dir)
        archive = pack_bundle(bundle_dir)
    except BundleError as e:
        raise UsageError(str(e)) from e
    chunk_size = parse_size(chunk_size)
    if not 1024 <= chunk_size <= MAX_CHUNK_SIZE:
        raise UsageError(f"chunk size must be 1k..{MAX_CHUNK_SIZE // (1024 * 1024)}m (got {chunk_size} bytes)")
    sign = _signer(sign_key)
    try:  # one begin per target: its 'to' (device id or fleet) is signed; the chunks are shared
        first = make_update(archive, manifest, to=targets[0][0], chunk_size=chunk_size, signer=sign,
                            update_id=update_id)
        updates = {to: first if i == 0 else first.addressed_to(to, sign) for i, (to, _) in enumerate(targets)}
    except ValidationError as e:  # e.g. a manifest version of over 200 characters or with a control character
        raise UsageError(f"{bundle_dir}: cannot be sent as an update: {validation_errors(e)}") from e
    except ValueError as e:  # a target that cannot be a 'to' (over 200 characters)
        raise UsageError(str(e)) from e
    logger.info("update %s: %s %s, %d bytes in %d chunks%s", first.update_id, manifest.name, manifest.version,
                len(archive), len(first.chunks), ", signed" if sign_key is not None else "")
    return _deliver(broker, prefix, targets, lambda to, set_topic: updates[to].messages(set_topic),
                    first.update_id, wait_s, fleet,
                    _conn(tls, username, password, client_id, connect_timeout_s), send_timeout_s, len(archive))


def rollback(broker: str, *, devices: Sequence[str] | None = None, fleet: bool = False, prefix: str = DEFAULT_PREFIX,
             sign_key: Any = None, wait_s: float | None = None, tls: TlsSettings | None = None,
             username: str | None = None, password: str | None = None, client_id: str | None = None,
             connect_timeout_s: float = 10.0) -> list[DeviceOutcome]:
    """Tell devices to swap back to their previous model."""
    targets = _targets(devices, fleet, prefix)
    sign = _signer(sign_key)
    try:  # one per target: its 'to' is signed
        first = make_rollback(to=targets[0][0], signer=sign)
        msgs = {to: first if i == 0 else make_rollback(to=to, signer=sign, update_id=first["update_id"],
                                                       created=first["created"]) for i, (to, _) in enumerate(targets)}
    except ValueError as e:  # a target that cannot be a 'to'
        raise UsageError(str(e)) from e
    return _deliver(broker, prefix, targets, lambda to, set_topic: [(set_topic, encode(msgs[to]))],
                    first["update_id"], wait_s, fleet, _conn(tls, username, password, client_id, connect_timeout_s), None, 0)

"""``python -m train.publish``: send a model bundle to devices over MQTT, roll back, make keys.

Needs no TensorFlow (only ``sdk`` and paho-mqtt; ``cryptography`` to sign)::

    python -m train.publish --bundle runs/X/bundles/rpi --device rpi4-1 --broker mqtt.local:1883 --wait 60
    python -m train.publish --bundle bundles/rpi --fleet --broker mqtt.local:8883 --ca-certs ca.pem \\
        --sign-key keys/edgeclf.key --wait 120
    python -m train.publish rollback --device rpi4-1 --broker mqtt.local:1883 --sign-key keys/edgeclf.key --wait 30
    python -m train.publish keygen keys/edgeclf        # keys/edgeclf.key (0600) + keys/edgeclf.pub

The library calls take the same arguments (:func:`publish_bundle`, :func:`rollback`,
:func:`pack_bundle`). The wire format is in docs/mqtt.md ("Model updates") and
:mod:`sdk.update`.

Exit codes: 0 sent (with ``--wait``: every device applied it), 1 internal error, 2 bad input
(bundle, key file, arguments), 3 broker unreachable or the messages not acknowledged,
4 a device refused the update or did not answer within ``--wait``, 10 the broker's TLS certificate
is not trusted (unknown CA, expired), 11 it is issued for another host name (the same codes as
``edge-classify``).
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from pydantic import ValidationError

from sdk.bundle import BundleError, verify_bundle
from sdk.errors import MqttConfigError
from sdk.mqtt import MqttPublisher, Outbox, TlsSettings, credentials_from_env, parse_broker
from sdk.mqtt_args import add_credential_arguments, add_tls_arguments, tls_from_args
from sdk.topics import DEFAULT_PREFIX, FLEET, Topics, all_devices, device_of, fleet_model_set
from sdk.update import (
    DEFAULT_CHUNK_SIZE,
    MAX_CHUNK_SIZE,
    encode,
    generate_keypair,
    load_private_key,
    make_rollback,
    make_update,
    pack_bundle,
)

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_BROKER, EXIT_DEVICE = 0, 1, 2, 3, 4
GOOD = ("applied", "rolled_back", "sent")

__all__ = ["DeviceOutcome", "PublishError", "pack_bundle", "parse_size", "publish_bundle", "rollback", "main"]


class PublishError(Exception):
    exit_code = EXIT_INTERNAL


class BadInput(PublishError, ValueError):
    """A bundle, key file or argument that cannot work."""

    exit_code = EXIT_USAGE


class BrokerError(PublishError, RuntimeError):
    """The broker cannot be reached, or did not acknowledge every message in time."""

    exit_code = EXIT_BROKER


class BrokerRefused(PublishError):
    """The broker's TLS certificate was refused; ``exit_code`` is that of the sdk error (10, 11)."""

    def __init__(self, error: Exception):
        super().__init__(str(error))
        self.exit_code = getattr(error, "exit_code", EXIT_BROKER)


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
        raise BadInput(f"invalid size {text!r}; use bytes or a k/m suffix, e.g. 256k")
    return int(m.group(1)) * {"": 1, "k": 1024, "m": 1024 * 1024}[m.group(2).lower()]


def _targets(devices: Sequence[str] | None, fleet: bool, prefix: str) -> list[tuple[str, str]]:
    """``(label, set topic)`` per target."""
    if bool(devices) == bool(fleet):
        raise BadInput("name the devices (--device ID ...) or --fleet, not both and not neither")
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
        raise BadInput(str(e)) from e


def _sign_key(sign_key: Any) -> Any:
    if sign_key is None or not isinstance(sign_key, (str, Path)):
        return sign_key
    try:
        return load_private_key(sign_key)
    except ValueError as e:
        raise BadInput(str(e)) from e


class _Session:
    """A connected publisher plus a listener for the devices' ``model/state``."""

    def __init__(self, broker: str, prefix: str, *, tls: TlsSettings | None, username: str | None,
                 password: str | None, client_id: str | None, connect_timeout_s: float):
        try:
            host, port = parse_broker(broker)
        except MqttConfigError as e:
            raise BadInput(str(e)) from e
        self.prefix = prefix
        self.states: dict[str, dict] = {}
        self.cond = threading.Condition()
        try:
            self.pub = MqttPublisher(host, port, client_id or "", outbox=Outbox(":memory:", 1_000_000), tls=tls,
                                     username=username, password=password, reconnect_min_s=0.2, reconnect_max_s=2.0)
        except MqttConfigError as e:
            raise BadInput(str(e)) from e
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
            if self.pub.fatal is not None:
                raise BrokerRefused(self.pub.fatal)
            why = f" ({self.pub.last_error})" if self.pub.last_error else ""
            raise BrokerError(f"cannot connect to the MQTT broker {self.address} within "
                              f"{self.connect_timeout_s:g} s{why}")

    def send(self, msgs: Sequence[tuple[str, bytes]], timeout_s: float) -> None:
        for topic, payload in msgs:
            self.pub.publish(topic, payload, qos=1)
        if not self.pub.flush(timeout_s):
            raise BrokerError(f"the broker {self.address} did not acknowledge {self.pub.queue_depth} of "
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
    without ``wait_s``). Raises :class:`BadInput` or :class:`BrokerError`."""
    targets = _targets(devices, fleet, prefix)
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise BadInput(f"{bundle_dir}: model bundle not found (a directory with manifest.json and model.tflite)")
    try:
        manifest = verify_bundle(bundle_dir)
        archive = pack_bundle(bundle_dir)
    except BundleError as e:
        raise BadInput(str(e)) from e
    chunk_size = parse_size(chunk_size)
    if not 1024 <= chunk_size <= MAX_CHUNK_SIZE:
        raise BadInput(f"chunk size must be 1k..{MAX_CHUNK_SIZE // (1024 * 1024)}m (got {chunk_size} bytes)")
    key = _sign_key(sign_key)
    try:  # one begin per target: its 'to' (device id or fleet) is signed; the chunks are shared
        first = make_update(archive, manifest, to=targets[0][0], chunk_size=chunk_size, sign_key=key,
                            update_id=update_id)
        updates = {to: first if i == 0 else first.addressed_to(to, key) for i, (to, _) in enumerate(targets)}
    except ValidationError as e:  # e.g. a manifest version of over 200 characters or with a control character
        fields = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or '(message)'}: {err['msg']}"
                           for err in e.errors())
        raise BadInput(f"{bundle_dir}: cannot be sent as an update: {fields}") from e
    except ValueError as e:  # a target that cannot be a 'to' (over 200 characters)
        raise BadInput(str(e)) from e
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
    key = _sign_key(sign_key)
    try:  # one per target: its 'to' is signed
        first = make_rollback(to=targets[0][0], sign_key=key)
        msgs = {to: first if i == 0 else make_rollback(to=to, sign_key=key, update_id=first["update_id"],
                                                       created=first["created"]) for i, (to, _) in enumerate(targets)}
    except ValueError as e:  # a target that cannot be a 'to'
        raise BadInput(str(e)) from e
    return _deliver(broker, prefix, targets, lambda to, set_topic: [(set_topic, encode(msgs[to]))],
                    first["update_id"], wait_s, fleet, _conn(tls, username, password, client_id, connect_timeout_s), None, 0)


# -- command line ---------------------------------------------------------------------------------
def _add_connection(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("broker")
    g.add_argument("--broker", required=True, metavar="HOST:PORT", help="MQTT broker")
    g.add_argument("--prefix", default=DEFAULT_PREFIX, help="topic prefix (mqtt.topic_prefix of the devices)")
    g.add_argument("--client-id", help="MQTT client id (default: random)")
    add_tls_arguments(g)
    add_credential_arguments(g)
    g.add_argument("--connect-timeout", type=float, default=10.0, metavar="S", help="give up connecting after S s")
    t = p.add_argument_group("targets")
    x = t.add_mutually_exclusive_group(required=True)
    x.add_argument("--device", action="extend", nargs="+", metavar="ID", help="device id(s)")
    x.add_argument("--fleet", action="store_true", help="every device (the fleet topic)")
    p.add_argument("--sign-key", metavar="KEY", help="ed25519 private key (PEM) to sign with")
    p.add_argument("--wait", type=float, metavar="S",
                   help="wait up to S s for every device's model/state to report the outcome")
    p.add_argument("--json", action="store_true", help="print the outcomes as JSON")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging")


def _connection_kwargs(a: argparse.Namespace) -> dict:
    try:
        tls = tls_from_args(a)
    except MqttConfigError as e:
        raise BadInput(str(e)) from e
    user, password = credentials_from_env(a.username_env, a.password_env)
    return {"prefix": a.prefix, "tls": tls, "username": user, "password": password, "client_id": a.client_id,
            "connect_timeout_s": a.connect_timeout, "sign_key": a.sign_key, "wait_s": a.wait,
            "devices": a.device, "fleet": a.fleet}


def _report(outcomes: list[DeviceOutcome], as_json: bool) -> int:
    if as_json:
        print(json.dumps([asdict(o) for o in outcomes]))
    else:
        for o in outcomes:
            print(o.line())
    if not outcomes:
        print("no device reported (none has a retained model/state on this broker)", file=sys.stderr)
        return EXIT_DEVICE
    return EXIT_OK if all(o.ok for o in outcomes) else EXIT_DEVICE


def _setup_logging(verbose: int) -> None:
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _cmd_publish(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m train.publish",
                                description="Send a model bundle to devices over MQTT (subcommands: rollback, keygen).",
                                epilog="exit codes:" + __doc__.split("Exit codes:")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", required=True, metavar="DIR", help="bundle directory (python -m train.export)")
    p.add_argument("--chunk-size", default="256k", help="bytes per chunk message (e.g. 64k, 1m)")
    _add_connection(p)
    a = p.parse_args(argv)
    _setup_logging(a.verbose)
    outcomes = publish_bundle(a.bundle, a.broker, chunk_size=a.chunk_size, **_connection_kwargs(a))
    return _report(outcomes, a.json)


def _cmd_rollback(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m train.publish rollback",
                                description="Tell devices to swap back to their previous model.")
    _add_connection(p)
    a = p.parse_args(argv)
    _setup_logging(a.verbose)
    return _report(rollback(a.broker, **_connection_kwargs(a)), a.json)


def _cmd_keygen(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m train.publish keygen",
                                description="Make an ed25519 key pair: OUT_PREFIX.key (private, 0600; sign with "
                                            "--sign-key) and OUT_PREFIX.pub: copy it to every device as the file "
                                            "its update.public_key names (/etc/edgeclf/update.pub in "
                                            "firmware_configs/*.yaml). Devices refuse unsigned updates.")
    p.add_argument("out_prefix", metavar="OUT_PREFIX")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    a = p.parse_args(argv)
    try:
        key, pub, kid = generate_keypair(a.out_prefix, force=a.force)
    except ValueError as e:
        raise BadInput(str(e)) from e
    print(f"private key {key} (keep it secret, on this host: --sign-key {key}), public key {pub}, key_id {kid}\n"
          f"copy {pub} to every device as the file its update.public_key names "
          f"(/etc/edgeclf/update.pub in firmware_configs/*.yaml); devices refuse unsigned updates")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cmd = {"keygen": _cmd_keygen, "rollback": _cmd_rollback}.get(argv[0] if argv else "", _cmd_publish)
    if cmd is not _cmd_publish:
        argv = argv[1:]
    try:
        return cmd(argv)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2)
        return int(e.code or 0)
    except PublishError as e:
        print(f"train.publish: error: {e}", file=sys.stderr)
        return e.exit_code
    except Exception:
        logger.exception("unexpected error")
        return EXIT_INTERNAL

"""Collect the uncertain frames devices send back (``<prefix>/v1/+/sample``) into a feedback store.

    python -m train.collect --broker mqtt.local:1883 --out feedback/
    python -m train.collect --broker HOST:8883 --out feedback/ --ca-certs ca.pem --group site-a --max-mb 500

Nothing is lost while the collector is down or when it crashes:

- MQTT 5 with ``clean_start=False``, a Session Expiry Interval (``--session-expiry``, 7 days) and a
  stable client id: the broker keeps the subscription and queues QoS 1 samples for it while it is
  away, and hands them over when it returns;
- manual acknowledgement: a sample is acknowledged (PUBACK) only once it is committed to the
  store, or judged a duplicate or invalid, so one received just before a crash is redelivered.

A shared subscription (``$share/<group>/...``, ``--group``) lets several collectors split the
samples; ``--no-share`` subscribes plainly (every collector gets every sample). Invalid payloads
are logged with their topic, device and reason, counted, acknowledged (never retried) and kept in
``<out>/rejected/`` up to ``--rejected-mb``. A storage failure (disk full) is logged and the sample
left unacknowledged: the broker redelivers it after the next reconnect.

The library twin is :class:`Collector`. Exit codes: 0 ok (also on SIGTERM/SIGINT), 1 ``--timeout``
reached before ``--max-messages``, 2 bad arguments (broker address, TLS files, output folder),
10 the broker's TLS certificate is not trusted (unknown CA, expired), 11 it is issued for another host
name (the same codes as ``edge-classify``).
"""
from __future__ import annotations

import argparse
import base64
import json
import logging
import signal
import socket
import sqlite3
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from sdk.mqtt import TlsSettings, credentials_from_env, parse_broker
from sdk.mqtt_args import add_credential_arguments, add_tls_arguments, tls_from_args
from sdk.topics import DEFAULT_PREFIX, all_devices, check_prefix, check_segment, device_of
from train.loop.store import FeedbackError, FeedbackStore

logger = logging.getLogger(__name__)

WEEK_S = 7 * 24 * 3600


class Collector:
    """An MQTT 5 subscriber that puts every sample into ``store``; a context manager.

    ``group``: the shared-subscription group (None: a plain subscription). ``rejected_dir``: where
    invalid payloads are kept (newest first, up to ``rejected_max_bytes``), or None.
    """

    def __init__(self, store: FeedbackStore, host: str, port: int = 1883, *, client_id: str,
                 prefix: str = DEFAULT_PREFIX, group: str | None = "collectors", session_expiry: int = WEEK_S,
                 tls: TlsSettings | None = None, username: str | None = None, password: str | None = None,
                 keepalive: int = 30, reconnect_min_s: float = 0.5, reconnect_max_s: float = 30.0,
                 rejected_dir: Path | None = None, rejected_max_bytes: int = 10_000_000):
        if not client_id:
            raise ValueError("client_id must be set and stable across restarts (the broker keys the session on it)")
        check_prefix(prefix)
        if group is not None:
            check_segment(group, "shared-subscription group")
        self.store = store
        self.client_id = client_id
        self.host, self.port = host, port
        self.prefix = prefix
        self.topic_filter = all_devices("sample", prefix)
        self.subscription = f"$share/{group}/{self.topic_filter}" if group else self.topic_filter
        self.rejected_dir = rejected_dir
        self.rejected_max_bytes = rejected_max_bytes
        self.received = self.stored = self.duplicates = self.invalid = self.errors = 0
        self.last_error: str | None = None
        self._handled = threading.Condition()
        self._subscribed = threading.Event()
        self._reconnect_timer: threading.Timer | None = None
        self.retry_s = 5.0  # after a storage error, reconnect this much later to get the sample again
        self._started = False
        self._t0 = time.monotonic()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5,
                        manual_ack=True)
        c.reconnect_delay_set(reconnect_min_s, reconnect_max_s)
        self._handshakes = tls.apply(c) if tls is not None else None
        self.connects = 0
        self.fatal: Exception | None = None  # the broker's certificate refused before a first connection
        if username is not None:
            c.username_pw_set(username, password)
        c.on_connect = self._on_connect
        c.on_connect_fail = self._on_connect_fail
        c.on_subscribe = self._on_subscribe
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        self.client = c
        self.keepalive = keepalive
        self.session_expiry = session_expiry

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> "Collector":
        if self._started:
            return self
        self._connect()
        self._started = True
        self._t0 = time.monotonic()
        return self

    def _connect(self) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.session_expiry
        self.client.connect_async(self.host, self.port, keepalive=self.keepalive, clean_start=False,
                                  properties=props)
        self.client.loop_start()

    def stop(self) -> None:
        """Disconnect cleanly; the broker keeps the session and queues samples until the next start."""
        if not self._started:
            return
        self._started = False
        self.client.disconnect()
        self.client.loop_stop()
        logger.info("%s", self.summary())

    def __enter__(self) -> "Collector":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def handled(self) -> int:
        """Messages acknowledged: stored, duplicate or invalid."""
        return self.stored + self.duplicates + self.invalid

    def wait_subscribed(self, timeout: float | None = None) -> bool:
        return self._subscribed.wait(timeout)

    def wait_for(self, n: int, timeout: float | None = None) -> bool:
        """Wait until ``n`` messages were handled since the start (True) or ``timeout`` passes."""
        with self._handled:
            return self._handled.wait_for(lambda: self.handled >= n, timeout)

    def summary(self) -> str:
        c = self.store.counts()
        return (f"collector {self.client_id}: {self.received} received, {self.stored} stored, "
                f"{self.duplicates} duplicates, {self.invalid} invalid, {self.errors} storage errors, "
                f"{self.store.evicted} evicted in {time.monotonic() - self._t0:.1f} s; store {self.store.path}: "
                f"{c['pending']} pending, {c['labelled']} labelled, {c['skipped']} skipped")

    # -- paho callbacks (network thread) ----------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self.last_error = f"broker refused the connection: {reason_code}"
            logger.error("MQTT %s:%d: %s", self.host, self.port, self.last_error)
            return
        self.last_error = None
        self.connects += 1
        logger.info("MQTT connected to %s:%d (%s)", self.host, self.port,
                    "session resumed" if flags.session_present else "new session")
        client.subscribe(self.subscription, qos=1)

    def _on_connect_fail(self, client, userdata) -> None:
        failed = self._handshakes.failure(self.host, self.port) if self._handshakes is not None else None
        if failed is None:
            return  # TCP weather: paho retries with backoff
        self.last_error, refusal = failed
        logger.error("%s", self.last_error)
        if refusal is not None and self.connects == 0:
            self.fatal = refusal
            with self._handled:
                self._handled.notify_all()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        failed = [rc for rc in reason_codes if rc.is_failure]
        if failed:
            self.last_error = f"subscription to {self.subscription} refused: {failed[0]}"
            logger.error("%s", self.last_error)
            return
        logger.info("subscribed to %s", self.subscription)
        self._subscribed.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._subscribed.clear()
        if self._started:
            logger.warning("MQTT disconnected from %s:%d (%s); reconnecting", self.host, self.port, reason_code)

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        self.received += 1
        device = device_of(msg.topic, "sample", self.prefix)
        try:
            if device is None:
                raise FeedbackError(f"topic {msg.topic!r} does not name a valid device (letters, digits, '_', '-', '.')")
            payload = json.loads(msg.payload)
            if not isinstance(payload, dict):
                raise FeedbackError("the payload is not a JSON object")
            if "device" in payload and payload["device"] != device:  # a missing one: the schema says so
                raise FeedbackError(f"$.device {payload['device']!r} does not match the topic's device {device!r}")
            new_id = self.store.add(payload)
        except (ValueError, ArithmeticError, RecursionError) as e:
            # FeedbackError, JSONDecodeError, UnicodeDecodeError; a number too large for sqlite (OverflowError);
            # absurdly nested JSON: the payload is bad and would fail the same way on every redelivery
            self._reject(msg, device, e)
            self._done(client, msg, "invalid")
            return
        except Exception as e:  # disk full, database locked: keep it unacknowledged and make the broker redeliver
            self.errors += 1
            self.last_error = f"{type(e).__name__}: {e}"
            logger.exception("could not store the sample on %s; it stays unacknowledged and is redelivered after "
                             "a reconnect in %.0f s", msg.topic, self.retry_s)
            self._schedule_reconnect()
            return
        self._done(client, msg, "duplicates" if new_id is None else "stored")

    def _schedule_reconnect(self) -> None:
        """Reconnect after ``retry_s`` (once, however many samples failed): the broker then redelivers
        every unacknowledged QoS 1 sample of the persistent session."""
        if self._reconnect_timer is not None and self._reconnect_timer.is_alive():
            return

        def reconnect():
            if not self._started:
                return
            logger.info("reconnecting to have the unacknowledged samples redelivered")
            # A clean disconnect keeps the session (and its unacknowledged samples) on the broker
            self.client.disconnect()
            self.client.loop_stop()
            if self._started:
                self._connect()

        self._reconnect_timer = threading.Timer(self.retry_s, reconnect)
        self._reconnect_timer.daemon = True
        self._reconnect_timer.start()

    def _done(self, client, msg: mqtt.MQTTMessage, counter: str) -> None:
        client.ack(msg.mid, msg.qos)
        with self._handled:
            setattr(self, counter, getattr(self, counter) + 1)
            self._handled.notify_all()

    def _reject(self, msg: mqtt.MQTTMessage, device: str, reason: Exception) -> None:
        logger.warning("rejected sample on %s (device %s): %s", msg.topic, device, reason)
        if self.rejected_dir is None or self.rejected_max_bytes <= 0:
            return
        try:
            self.rejected_dir.mkdir(parents=True, exist_ok=True)
            record = {"topic": msg.topic, "device": device, "reason": str(reason), "received": time.time(),
                      "payload_base64": base64.b64encode(msg.payload).decode("ascii")}
            (self.rejected_dir / f"{time.time_ns()}.json").write_text(json.dumps(record))
            files = sorted(self.rejected_dir.glob("*.json"), reverse=True)  # newest first
            total = 0
            for p in files:
                total += p.stat().st_size
                if total > self.rejected_max_bytes:
                    p.unlink(missing_ok=True)
        except OSError as e:
            logger.warning("could not keep the rejected payload in %s: %s", self.rejected_dir, e)


# -- CLI -------------------------------------------------------------------------------------
def _number(kind: type, minimum: float, strict: bool = False):
    """An argparse type: ``kind`` (int or float) at least ``minimum`` (above it when ``strict``)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a{'n integer' if kind is int else ' number'}: {text!r}") from None
        if value < minimum or (strict and value == minimum):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {minimum} (got {text})")
        return value
    return parse


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.collect", description=__doc__.split("\n\n")[0],
                                epilog="Exit codes:" + __doc__.split("Exit codes:")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--broker", required=True, help="MQTT broker HOST:PORT (port defaults to 1883)")
    p.add_argument("--out", required=True, type=Path, help="feedback store folder (created if missing)")
    p.add_argument("--prefix", default=DEFAULT_PREFIX, help=f"topic prefix the devices use (default: {DEFAULT_PREFIX})")
    p.add_argument("--group", default="collectors", help="shared-subscription group (default: collectors)")
    p.add_argument("--no-share", action="store_true", help="plain subscription: this collector gets every sample")
    p.add_argument("--client-id", help="stable MQTT client id (default: edgeclf-collector-<group>-<host name>)")
    p.add_argument("--session-expiry", type=_number(int, 0), default=WEEK_S,
                   help="seconds the broker keeps the session and queues samples while away (default: 7 days)")
    p.add_argument("--max-samples", type=_number(int, 1),
                   help="keep at most this many samples (the oldest pending ones go first)")
    p.add_argument("--max-mb", type=_number(float, 0, strict=True), help="keep at most this many MB of images")
    p.add_argument("--labels", type=Path, help="labels.txt (one per line, model index order) the labels must be from")
    p.add_argument("--dedup-distance", type=_number(int, 0), default=4,
                   help="perceptual-hash bits under which a sample is a duplicate of a recent one (default: 4)")
    p.add_argument("--rejected-mb", type=_number(float, 0), default=10.0,
                   help="keep invalid payloads in <out>/rejected/ up to this many MB (0: do not keep; default: 10)")
    g = p.add_argument_group("TLS and credentials (the same flags as train.publish and edge-classify)")
    add_tls_arguments(g)
    add_credential_arguments(g)
    # the spellings of earlier releases, kept working
    for old, dest in (("--tls-ca", "ca_certs"), ("--tls-cert", "certfile"), ("--tls-key", "keyfile")):
        p.add_argument(old, dest=dest, help=argparse.SUPPRESS)
    p.add_argument("--max-messages", type=_number(int, 1),
                   help="exit after handling this many messages (scripted runs)")
    p.add_argument("--timeout", type=_number(float, 0, strict=True), help="exit after this many seconds")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    return p


def _read_labels(p: argparse.ArgumentParser, path: Path | None) -> list[str] | None:
    if path is None:
        return None
    try:
        labels = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError as e:
        p.error(f"--labels {path}: cannot read ({e.strerror})")
    if not labels:
        p.error(f"--labels {path}: no labels in it (expected one per line)")
    return labels


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        host, port = parse_broker(args.broker)
    except ValueError as e:
        p.error(f"--broker: {e}")
    try:
        tls = tls_from_args(args)
    except ValueError as e:
        p.error(str(e))
    labels = _read_labels(p, args.labels)
    user, password = credentials_from_env(args.username_env, args.password_env)
    try:
        store = FeedbackStore(args.out, labels=labels, max_samples=args.max_samples,
                              max_bytes=int(args.max_mb * 1e6) if args.max_mb else None,
                              dedup_distance=args.dedup_distance)
    except (OSError, sqlite3.Error, FeedbackError) as e:
        p.error(f"--out {args.out}: cannot use it as a feedback store ({e})")
    group = None if args.no_share else args.group
    client_id = args.client_id or f"edgeclf-collector-{group or 'all'}-{socket.gethostname()}"
    try:
        collector = Collector(store, host, port, client_id=client_id, prefix=args.prefix, group=group,
                              session_expiry=args.session_expiry, tls=tls, username=user, password=password,
                              rejected_dir=args.out / "rejected", rejected_max_bytes=int(args.rejected_mb * 1e6))
    except ValueError as e:
        p.error(str(e))

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    deadline = time.monotonic() + args.timeout if args.timeout else None
    code = 0
    with store, collector:
        logger.info("collecting %s from %s:%d into %s", collector.subscription, host, port, args.out)
        while not stop.is_set():
            if collector.fatal is not None:
                print(f"train.collect: error: {collector.fatal}", file=sys.stderr)
                code = collector.fatal.exit_code
                break
            if args.max_messages and collector.handled >= args.max_messages:
                break
            if deadline is not None and time.monotonic() >= deadline:
                if args.max_messages:
                    logger.error("timed out after %.0f s with %d of %d messages", args.timeout, collector.handled,
                                 args.max_messages)
                    code = 1
                break
            stop.wait(0.1)
    return code

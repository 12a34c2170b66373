"""Collect the uncertain frames devices send back (``<prefix>/v1/+/sample``) into a feedback store.

:class:`Collector` is an MQTT 5 subscriber (paho) that puts every sample into a
:class:`~train.loop.store.FeedbackStore`; ``python -m train.collect`` (train/collect.py) is its
command line. Nothing is lost while the collector is down or when it crashes:

- MQTT 5 with ``clean_start=False``, a Session Expiry Interval (``session_expiry``, 7 days) and a
  stable client id: the broker keeps the subscription and queues QoS 1 samples for it while it is
  away, and hands them over when it returns;
- manual acknowledgement: a sample is acknowledged (PUBACK) only once it is committed to the
  store, or judged a duplicate or invalid, so one received just before a crash is redelivered.

A shared subscription (``$share/<group>/...``, ``group``) lets several collectors split the
samples; ``group=None`` subscribes plainly (every collector gets every sample). Invalid payloads
are logged with their topic, device and reason, counted, acknowledged (never retried) and kept in
``rejected_dir`` up to ``rejected_max_bytes``. A storage failure (disk full) is logged and the
sample left unacknowledged: the broker redelivers it after the next reconnect.
"""
from __future__ import annotations

import base64
import json
import logging
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from sdk.mqtt import TlsSettings
from sdk.topics import DEFAULT_PREFIX, all_devices, check_prefix, device_of, shared
from train.loop.samples import FeedbackError
from train.loop.store import FeedbackStore

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
        self.store = store
        self.client_id = client_id
        self.host, self.port = host, port
        self.prefix = prefix
        self.topic_filter = all_devices("sample", prefix)
        self.subscription = shared(group, self.topic_filter) if group is not None else self.topic_filter
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

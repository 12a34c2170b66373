"""MQTT transport: paho-mqtt v2, store-and-forward, TLS/auth, last will. It only moves bytes.

Every persisted message first goes into a bounded FIFO (:class:`sdk.outbox.Outbox`: staged in
memory, group-committed to sqlite within ``commit_interval_s`` unless acknowledged first); a sender
thread hands messages to paho in order while connected (at most ``window`` in flight), commits
what is due, and forgets a message once the broker has acknowledged it (PUBACK for QoS 1). paho re-sends what was in
flight after a reconnect, the sender then carries on from where it was, so messages arrive
in order and none is lost across a broker restart; rows not yet acknowledged when the
process stops stay on disk and go out at the next start (at-least-once: a consumer may see a
duplicate after a crash, never a gap).

Subscriptions (:meth:`MqttPublisher.subscribe`) are made again on every (re)connect; their
callbacks run on paho's network thread, so they must hand work to another thread at once.
``clean_session=False`` keeps the session (subscriptions and QoS 1 messages queued while the
device is offline) on the broker between connections (MQTT 3.1.1, a fixed client id).

Network weather (broker down, refused, TLS handshake failing) is logged and retried with
backoff, never raised; unusable settings (missing TLS files, bad port) raise
:class:`MqttConfigError`.
"""
from __future__ import annotations

import collections
import logging
import os
import sqlite3  # the outbox's errors
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Protocol

import paho.mqtt.client as mqtt

from .errors import BrokerCertificateError, BrokerHostnameError, MqttConfigError
from .outbox import Outbox

logger = logging.getLogger(__name__)

Message = tuple[str, bytes, int, bool]  # topic, payload, qos, retain
DEFAULT_USERNAME_ENV = "EDGECLF_MQTT_USERNAME"  # the environment variables the credentials come from
DEFAULT_PASSWORD_ENV = "EDGECLF_MQTT_PASSWORD"
MessageCallback = Callable[[str, bytes], None]  # (topic, payload), called on paho's network thread


class Publisher(Protocol):
    """The seam the pipeline publishes through."""

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False,
                persist: bool = True) -> None: ...


def parse_broker(address: str) -> tuple[str, int]:
    """``host:port`` (port defaults to 1883; ``[::1]:1883`` for IPv6)."""
    address = address.strip()
    if not address:
        raise MqttConfigError("empty broker address; expected HOST:PORT")
    host, port = address, "1883"
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        port = rest.lstrip(":") or "1883"
    elif address.count(":") == 1:
        host, port = address.split(":")
    try:
        p = int(port)
    except ValueError as e:
        raise MqttConfigError(f"invalid broker port in {address!r}; expected HOST:PORT") from e
    if not 0 < p < 65536 or not host:
        raise MqttConfigError(f"invalid broker address {address!r}; expected HOST:PORT with port 1..65535")
    return host, p


@dataclass
class TlsSettings:
    ca_certs: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    insecure: bool = False  # skip the host name check (self-signed lab brokers)

    def check(self) -> None:
        for name in ("ca_certs", "certfile", "keyfile"):
            p = getattr(self, name)
            if p is not None and not Path(p).is_file():
                raise MqttConfigError(f"TLS {name} file not found: {p}")
        if (self.certfile is None) != (self.keyfile is None):
            raise MqttConfigError("TLS client certificate needs both certfile and keyfile")

    def context(self) -> ssl.SSLContext:
        """A client context that verifies the broker's certificate against ``ca_certs`` (the system
        CAs when None) and, unless ``insecure``, that it is issued for the host connected to."""
        self.check()
        try:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca_certs)
            if self.certfile:
                ctx.load_cert_chain(self.certfile, self.keyfile)
        except (ssl.SSLError, ValueError, OSError) as e:
            raise MqttConfigError(f"TLS settings unusable: {e}") from e
        ctx.check_hostname = not self.insecure
        return ctx

    def apply(self, client: mqtt.Client) -> "HandshakeLog":
        """Check the files and switch ``client`` to TLS (server certificate always verified).
        Returns the log of its handshake failures (see :meth:`refusal`)."""
        ctx = self.context()
        log = HandshakeLog(self)
        ctx.sslsocket_class = log.socket_class()
        client.tls_set_context(ctx)
        client.tls_insecure_set(self.insecure)
        return log

    def refusal(self, host: str, port: int, error: BaseException | None) -> MqttConfigError | None:
        """The error to stop with when ``error`` (a failed handshake) means the broker's certificate
        was refused: :class:`BrokerHostnameError` or :class:`BrokerCertificateError`; None otherwise."""
        if not isinstance(error, ssl.SSLCertVerificationError):
            return None
        why = error.verify_message or str(error)
        if error.verify_code in _HOSTNAME_MISMATCH:
            return BrokerHostnameError(
                f"TLS: the certificate of the MQTT broker {host}:{port} is not valid for the host name {host!r} "
                f"({why}); connect to a name the certificate lists, or issue the broker a certificate for {host!r}")
        trusted = f"the CA file {self.ca_certs}" if self.ca_certs else "the system's CA certificates"
        return BrokerCertificateError(
            f"TLS: the certificate of the MQTT broker {host}:{port} is not trusted ({why}): it does not verify "
            f"against {trusted}; give the CA that signed the broker's certificate")


_HOSTNAME_MISMATCH = (62, 64)  # OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH


class HandshakeLog:
    """The last failed TLS handshake of a paho client. paho swallows the exception (its
    ``on_connect_fail`` has no argument), so the client's SSL sockets record it here."""

    def __init__(self, tls: TlsSettings) -> None:
        self.tls = tls
        self.last: ssl.SSLError | None = None

    def socket_class(self) -> type[ssl.SSLSocket]:
        log = self

        class RecordingSSLSocket(ssl.SSLSocket):
            def do_handshake(self, block: bool = False) -> None:
                try:
                    super().do_handshake(block)
                except ssl.SSLError as e:
                    log.last = e
                    raise
                log.last = None

        return RecordingSSLSocket

    def take(self) -> ssl.SSLError | None:
        e, self.last = self.last, None
        return e

    def failure(self, host: str, port: int) -> tuple[str, MqttConfigError | None] | None:
        """The handshake that just failed, taken: ``(what to log, the refusal to stop with, or None
        when retrying may help)``; None when the failure was not a TLS one (TCP weather)."""
        error = self.take()
        if error is None:
            return None
        refusal = self.tls.refusal(host, port, error)
        return (str(refusal) if refusal else f"TLS handshake with {host}:{port} failed: {error}"), refusal


class MqttPublisher:
    """paho v2 client + outbox + sender thread. Use as a context manager.

    ``status_topic``: last will ``offline`` (retained), ``online`` (retained) on every connect.
    ``birth``: extra messages (e.g. Home Assistant discovery) published on every connect.
    ``clean_session=False``: a persistent session (needs a fixed ``client_id``), so QoS 1
    messages on subscribed topics published while the client is offline arrive at the next connect.
    """

    def __init__(self, host: str, port: int = 1883, client_id: str = "", *, status_topic: str | None = None,
                 birth: Iterable[Message] = (), outbox: Outbox | None = None, tls: TlsSettings | None = None,
                 username: str | None = None, password: str | None = None, keepalive: int = 30,
                 reconnect_min_s: float = 0.5, reconnect_max_s: float = 30.0, window: int = 64,
                 clean_session: bool = True, coalesce_s: float = 0.003):
        if not 0 < int(port) < 65536:
            raise MqttConfigError(f"invalid broker port {port}")
        if not clean_session and not client_id:
            raise MqttConfigError("a persistent MQTT session (clean_session=False) needs a fixed client_id")
        self.host, self.port = host, int(port)
        self.status_topic = status_topic
        self.birth = list(birth)
        self.outbox = outbox if outbox is not None else Outbox()
        self.window = window
        self.coalesce_s = coalesce_s  # the sender waits this long after a wake-up to hand paho several messages at once
        self.connects = 0
        self.disconnects = 0
        self.queued = 0      # persisted messages put in the outbox by this process
        self.delivered = 0   # outbox messages the broker acknowledged (PUBACK) during this process, any run's
        self.not_sent = 0    # non-persistent messages skipped while offline
        self.last_error: str | None = None
        # The broker's certificate refused before any connection succeeded: connecting cannot work
        # until the settings change, so the owner stops (sdk.run raises it, the CLIs exit with its code).
        self.fatal: MqttConfigError | None = None
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._acked: collections.deque[int] = collections.deque()
        self._inflight: dict[int, int] = {}  # paho mid -> outbox row id
        self._last_id = 0
        self.clean_session = clean_session
        self._subs: list[tuple[str, int, MessageCallback]] = []
        self._subs_lock = threading.Lock()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311,
                        clean_session=clean_session)
        c.max_inflight_messages_set(window)
        c.reconnect_delay_set(reconnect_min_s, reconnect_max_s)  # type: ignore[arg-type]  # paho takes floats
        self._handshakes = tls.apply(c) if tls is not None else None
        if username is not None:
            c.username_pw_set(username, password)
        elif password is not None:
            raise MqttConfigError("an MQTT password without a user name")
        if status_topic:
            c.will_set(status_topic, b"offline", qos=1, retain=True)
        c.on_connect = self._on_connect
        c.on_connect_fail = self._on_connect_fail
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        self.client = c
        self.keepalive = keepalive
        self._sender = threading.Thread(target=self._send_loop, name="mqtt-sender", daemon=True)
        self._started = False

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> "MqttPublisher":
        if self._started:
            return self
        self._started = True
        try:
            self.client.connect_async(self.host, self.port, keepalive=self.keepalive)
        except (ValueError, OSError) as e:
            raise MqttConfigError(f"cannot use broker {self.host}:{self.port}: {e}") from e
        self.client.loop_start()
        self._sender.start()
        return self

    def __enter__(self) -> "MqttPublisher":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def wait_connected(self, timeout: float | None = None) -> bool:
        """True once connected; False when ``timeout`` passes first or connecting cannot work (:attr:`fatal`)."""
        end = None if timeout is None else time.monotonic() + timeout
        while not self._connected.is_set():
            if self.fatal is not None:
                return False
            left = 0.1 if end is None else min(0.1, end - time.monotonic())
            if left <= 0:
                return False
            self._connected.wait(left)
        return True

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def queue_depth(self) -> int:
        return max(0, len(self.outbox) - len(self._acked))

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every persisted message is acknowledged (True) or ``timeout`` passes."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self._wake.set()
            if len(self.outbox) == 0 and not self._inflight and not self._acked:
                return True
            time.sleep(0.01)
        return len(self.outbox) == 0

    def close(self, timeout: float = 5.0) -> None:
        """Flush (up to ``timeout`` while connected), publish ``offline``, disconnect.

        Unsent messages stay in the outbox file for the next start.
        """
        if not self._started:
            self.outbox.close()
            return
        end = time.monotonic() + timeout
        if not self.connected and len(self.outbox) and self.last_error is None:
            self.wait_connected(timeout)  # still connecting (TLS handshake): give it the flush budget
        if self.connected:
            self.flush(max(0.0, end - time.monotonic()))
            if self.status_topic:
                info = self.client.publish(self.status_topic, b"offline", qos=1, retain=True)
                try:
                    info.wait_for_publish(max(0.5, min(end - time.monotonic(), 2.0)))
                except (RuntimeError, ValueError):
                    pass
        self._stop.set()
        self._wake.set()
        self._sender.join(timeout=2.0)
        self._apply_acks()
        self.client.disconnect()
        self.client.loop_stop()
        self.outbox.close()
        self._started = False
        left = len(self.outbox)
        if left:
            why = self.last_error or ("the broker did not acknowledge them in time" if self.connects else
                                      f"the broker {self.host}:{self.port} was never reached")
            if self.outbox.path == ":memory:":
                logger.warning("%d messages undelivered (%s) and lost: the outbox is in memory", left, why)
            else:
                logger.warning("%d messages undelivered (%s): kept in %s, sent at the next start", left, why,
                               self.outbox.path)

    # -- publishing ----------------------------------------------------------------------
    def set_birth(self, birth: Iterable[Message]) -> None:
        """Replace the birth messages (sent on every connect) and queue them now."""
        self.birth = list(birth)
        for topic, payload, qos, retain in self.birth:
            self.publish(topic, payload, qos=qos, retain=retain)

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False,
                persist: bool = True) -> None:
        """Queue a message. ``persist=False`` (e.g. metrics): sent only when connected, else skipped."""
        if qos not in (0, 1, 2):
            raise ValueError(f"invalid qos {qos}; valid: 0, 1, 2")
        data = payload.encode() if isinstance(payload, str) else bytes(payload)
        if persist:
            self.outbox.put(topic, data, qos, retain)
            self.queued += 1
            self._wake.set()
        elif self.connected:
            self.client.publish(topic, data, qos=qos, retain=retain)
        else:
            self.not_sent += 1

    # -- subscribing -----------------------------------------------------------------------
    def subscribe(self, topic: str, qos: int, callback: MessageCallback) -> None:
        """Call ``callback(topic, payload)`` for every message matching the filter ``topic``.

        Subscribed now when connected and again on every reconnect; register before
        :meth:`start` so that messages a persistent session queued are not missed. The
        callback runs on paho's network thread: it must return quickly (queue the work).
        """
        if qos not in (0, 1, 2):
            raise ValueError(f"invalid qos {qos}; valid: 0, 1, 2")
        if not callable(callback):
            raise TypeError("callback must be callable as callback(topic, payload)")
        with self._subs_lock:
            self._subs.append((topic, qos, callback))
        if self.connected:
            self.client.subscribe(topic, qos)

    def _on_message(self, client, userdata, msg) -> None:
        with self._subs_lock:
            subs = list(self._subs)
        called = []
        for pattern, _, cb in subs:
            if cb in called or not mqtt.topic_matches_sub(pattern, msg.topic):
                continue
            called.append(cb)
            try:
                cb(msg.topic, msg.payload)
            except Exception:  # a consumer's bug must not take the network thread down
                logger.exception("MQTT message callback failed for %s", msg.topic)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        for rc in reason_codes:
            if rc.is_failure:
                logger.error("MQTT %s:%d refused a subscription (%s); check the broker's ACL",
                             self.host, self.port, rc)

    # -- paho callbacks (network thread) -------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self.last_error = f"broker refused the connection: {reason_code}"
            logger.error("MQTT %s:%d: %s", self.host, self.port, self.last_error)
            return
        self.connects += 1
        self.last_error = None
        logger.info("MQTT connected to %s:%d%s", self.host, self.port,
                    "" if self.clean_session else f" (session present: {bool(flags.session_present)})")
        if self.status_topic:
            client.publish(self.status_topic, b"online", qos=1, retain=True)
        for topic, payload, qos, retain in self.birth:
            client.publish(topic, payload, qos=qos, retain=retain)
        with self._subs_lock:
            subs = [(t, q) for t, q, _ in self._subs]
        if subs:
            client.subscribe(subs)
        self._connected.set()
        self._wake.set()

    def _on_connect_fail(self, client, userdata) -> None:
        failed = self._handshakes.failure(self.host, self.port) if self._handshakes is not None else None
        if failed is None:
            return  # TCP weather (refused, unreachable): paho retries with backoff
        self.last_error, refusal = failed
        if refusal is not None and self.connects == 0 and self.fatal is None:
            self.fatal = refusal
            logger.error("%s", refusal)
            self._wake.set()
        else:  # after a first success (certificate rotation, a broker restart): keep queueing and retrying
            logger.error("MQTT %s; retrying, %d messages queued", self.last_error, self.queue_depth)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        if was and not self._stop.is_set():  # not our own close()
            self.disconnects += 1
            logger.warning("MQTT disconnected from %s:%d (%s); %d messages queued, retrying",
                           self.host, self.port, reason_code, self.queue_depth)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        self._acked.append(mid)
        self._wake.set()

    # -- sender thread -------------------------------------------------------------------
    def _apply_acks(self) -> None:
        done = []
        while self._acked:
            mid = self._acked.popleft()
            row = self._inflight.pop(mid, None)
            if row is not None:
                done.append(row)
        if done:
            self.outbox.delete(done)
            self.delivered += len(done)

    def _send_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(min(0.2, self.outbox.commit_due_in()))
            if self.connected and self.coalesce_s:
                time.sleep(self.coalesce_s)  # gather what comes meanwhile: one wake-up for several messages
            self._wake.clear()
            try:
                self._apply_acks()
                self.outbox.commit_if_due()
                while self.connected and len(self._inflight) < self.window and not self._stop.is_set():
                    rows = self.outbox.peek(self._last_id, self.window - len(self._inflight))
                    if not rows:
                        break
                    for row_id, topic, payload, qos, retain in rows:
                        info = self.client.publish(topic, payload, qos=qos, retain=retain)
                        if qos == 0 and info.rc != mqtt.MQTT_ERR_SUCCESS:
                            break  # not written; retried after the reconnect
                        # QoS 1/2: paho keeps the message and re-sends it after a reconnect
                        self._inflight[info.mid] = row_id
                        self._last_id = row_id
                    self._apply_acks()
                self.outbox.commit_if_due()
            except sqlite3.ProgrammingError:  # outbox closed under us at shutdown
                return
            except Exception:  # never let the sender die silently
                logger.exception("MQTT sender error")
                time.sleep(0.5)


def credentials_from_env(username_env: str | None, password_env: str | None) -> tuple[str | None, str | None]:
    """Read the MQTT user name and password from the environment variables named in the config."""
    user = os.environ.get(username_env) if username_env else None
    password = os.environ.get(password_env) if password_env else None
    return user or None, password or None

"""The device's updater: :class:`ModelUpdater` receives commands and chunks on ``model/set`` (and
the fleet topic), stages the archive, checks it, installs it in the :class:`~sdk.update.store.ModelStore`
and hands the new classifier to the pipeline; every outcome is published (retained) on
``model/state`` and as an ``event``."""
from __future__ import annotations

import collections
import logging
import os
import queue
import threading
import time
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from .. import messages
from ..bundle import BundleError
from ..topics import Topics, parse_model_chunk
from .archive import EXTRACT_FACTOR, unpack_update
from .checks import (
    UpdatePolicy,
    check_addressed,
    check_claims,
    check_compatible,
    check_fresh,
    check_signature,
    smoke_test,
)
from .store import SEEN_KEEP, ModelStore, model_ref, public_ref, remove_tree
from .wire import MAX_CHUNK_SIZE, Begin, End, Rollback, UpdateRefused, parse_command, peek, peek_update_id

logger = logging.getLogger(__name__)

OUTCOMES = ("applied", "refused", "rolled_back")


class SwapTarget(Protocol):
    """What the updater needs of the pipeline (``classifier`` None: no model yet, capture mode)."""

    classifier: Any

    def request_swap(self, classifier: Any) -> Future: ...

    def recent_frames(self) -> list[np.ndarray]: ...


@dataclass
class _Pending:
    begin: Begin
    source: str
    started: float
    path: Path
    file: Any
    received: set[int] = field(default_factory=set)
    last_activity: float = 0.0


_STOP = object()


class ModelUpdater:
    """Receives updates on ``model/set`` (and the fleet topic), verifies, applies or refuses them.

    ``make_classifier(path)`` loads a bundle directory into a classifier like the running one
    (same delegate, preprocessing options); ``target`` is the running pipeline. A pipeline without
    a classifier (``configured_model`` None, capture mode) takes its first model the same way: the
    same verification, no compatibility check (nothing runs to compare with), nothing to roll back to. Use
    :meth:`start` before the publisher connects (so queued messages of a persistent session
    find the subscription) and :meth:`close` at the end.
    """

    def __init__(self, *, topics: Topics, publisher: Any, target: SwapTarget,
                 make_classifier: Callable[[Path], Any], store: ModelStore, configured_model: str | Path | None,
                 policy: UpdatePolicy | None = None, run_id: str = "",
                 on_model_change: Callable[[Any], None] | None = None):
        self.topics = topics
        self.on_model_change = on_model_change  # called with the new manifest after a swap or rollback
        self.publisher = publisher
        self.target = target
        self.make_classifier = make_classifier
        self.store = store
        self.configured_model = Path(configured_model) if configured_model is not None else None
        self.policy = policy or UpdatePolicy()
        self.run_id = run_id
        self.device_set = topics.model_set
        self.fleet_set = topics.fleet_model_set if self.policy.fleet else None
        self._queue: queue.Queue = queue.Queue()
        self._queued_bytes = 0
        self._qlock = threading.Lock()
        self._dropped = 0
        self._max_queued = self.policy.max_bytes + 2 * MAX_CHUNK_SIZE
        self._pending: _Pending | None = None
        self._finished: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._orphans: set[str] = set()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="model-updater", daemon=True)
        self._started = False
        self.outcomes: collections.deque[dict] = collections.deque(maxlen=100)  # the last outcomes of this run

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> "ModelUpdater":
        if self._started:
            return self
        self._started = True
        cur = self.target.classifier
        if cur is None:  # no model yet (capture mode): the first update brings one
            if self.store.active is not None:  # should not happen: app loads the stored one
                logger.warning("active.json names %s but no model is running", self.store.active["version"])
                self.store.state.update(active=None, previous=None)
        elif self.store.active is None:
            self.store.state["active"] = model_ref(cur.manifest, None, None)
        elif self.store.active["sha256"] != cur.manifest.sha256:  # should not happen: app loaded the stored one
            logger.warning("active.json names %s but %s is running", self.store.active["version"], cur.manifest.version)
            self.store.state["active"] = model_ref(cur.manifest, None, None)
        self.publisher.subscribe(f"{self.device_set}/#", 1, self._on_message)  # '#' matches the set topic too
        if self.fleet_set:
            self.publisher.subscribe(f"{self.fleet_set}/#", 1, self._on_message)
        self._thread.start()
        self._publish_state()
        if self.policy.public_key is not None:
            logger.info("model updates: listening on %s%s (signature required, key %s)", self.device_set,
                        f" and {self.fleet_set}" if self.fleet_set else "", self.policy.key_id)
        elif self.policy.allow_unsigned:
            logger.warning("model updates: update.allow_unsigned is true: UNSIGNED updates on %s%s are applied; anyone "
                           "who may publish there can replace the model (set update.public_key instead)",
                           self.device_set, f" and {self.fleet_set}" if self.fleet_set else "")
        else:
            logger.warning("model updates: no update.public_key, so every update on %s%s will be refused; install "
                           "the fleet's public key (python -m train.publish keygen) and set update.public_key, or "
                           "set update.enabled: false", self.device_set,
                           f" and {self.fleet_set}" if self.fleet_set else "")
        return self

    def close(self) -> None:
        if not self._started:
            return
        self._stopping.set()
        self._queue.put((_STOP, None))
        self._thread.join(timeout=self.policy.swap_timeout_s + 5)
        if self._pending is not None:
            self._drop_pending()
        self._started = False

    def __enter__(self) -> "ModelUpdater":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- paho network thread: queue only -----------------------------------------------------
    def _on_message(self, topic: str, payload: bytes) -> None:
        n = len(payload)
        with self._qlock:
            if self._queued_bytes + n > self._max_queued:
                self._dropped += 1
                if self._dropped == 1 or self._dropped % 100 == 0:
                    logger.warning("model update backlog over %d bytes: dropped %d messages", self._max_queued,
                                   self._dropped)
                return
            self._queued_bytes += n
        self._queue.put((topic, payload))

    # -- updater thread ----------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                if not self._step():
                    return
            except Exception:  # noqa: BLE001 - never let the updater die: the device must keep running
                logger.exception("model updater error")

    def _step(self) -> bool:
        """Handle one queued message (or none within 0.25 s) and check the timeout; False to stop."""
        try:
            topic, payload = self._queue.get(timeout=0.25)
        except queue.Empty:
            self._check_timeout()
            return True
        if topic is _STOP:
            return False
        with self._qlock:
            self._queued_bytes -= len(payload)
        if self._stopping.is_set():
            return False  # shutting down: the rest is dropped (an unfinished update must be sent again)
        try:
            self._handle(topic, payload)
        except Exception:  # noqa: BLE001
            logger.exception("model updater error on %s", topic)
            p = self._pending
            if p is not None and self._update_id_of(topic, payload) == p.begin.update_id:
                self._refuse_pending("internal error while handling the update (see the device log)")
        self._check_timeout()
        return True

    def _update_id_of(self, topic: str, payload: bytes) -> str | None:
        """The update a message belongs to (from its chunk topic or its JSON), if it says."""
        for set_topic in (self.device_set, self.fleet_set):
            if set_topic is None:
                continue
            if topic == set_topic:
                return peek_update_id(payload)
            if topic.startswith(set_topic + "/"):
                return topic[len(set_topic) + 1:].split("/")[0]
        return None

    def _handle(self, topic: str, payload: bytes) -> None:
        for set_topic, source in ((self.device_set, "device"), (self.fleet_set, "fleet")):
            if set_topic is None:
                continue
            if topic == set_topic:
                self._on_command(payload, source)
                return
            chunk = parse_model_chunk(set_topic, topic)
            if chunk is not None:
                self._on_chunk(*chunk, payload)
                return
        logger.debug("ignored message on %s", topic)

    def _on_command(self, payload: bytes, source: str) -> None:
        started = time.monotonic()
        try:
            cmd, raw = parse_command(payload)
        except UpdateRefused as e:
            uid = peek_update_id(payload)
            if uid and self._pending is not None and self._pending.begin.update_id == uid:
                self._refuse_pending(str(e))
            elif not (uid and self._already_handled(uid)):
                # not remembered as handled: junk must not push real update ids out of that memory
                self._finish(uid, peek(payload, "version"), "refused", str(e), started, source, remember=False)
            return
        if isinstance(cmd, End):
            self._on_end(cmd)
            return
        if self._already_handled(cmd.update_id) or (self._pending and self._pending.begin.update_id == cmd.update_id):
            logger.info("ignoring a repeated %s of update %s", cmd.kind, cmd.update_id)
            return
        if isinstance(cmd, Rollback):
            self._rollback(cmd, raw, started, source)
        else:
            self._on_begin(cmd, raw, started, source)

    def _already_handled(self, update_id: str) -> bool:
        return update_id in self._finished or self.store.seen(update_id)

    def _on_begin(self, begin: Begin, raw: dict, started: float, source: str) -> None:
        a = begin.archive
        try:
            self._check_authentic(begin, raw, source)
        except UpdateRefused as e:  # not remembered: a forged or misaddressed begin must not block the real one
            self._finish(begin.update_id, begin.version, "refused", str(e), started, source, remember=False)
            return
        try:
            if a.size > self.policy.max_bytes:
                raise UpdateRefused(f"archive of {a.size} bytes exceeds update.max_bytes ({self.policy.max_bytes})")
            if a.chunk_size > MAX_CHUNK_SIZE:
                raise UpdateRefused(f"chunk_size {a.chunk_size} exceeds {MAX_CHUNK_SIZE} bytes")
        except UpdateRefused as e:
            self._finish(begin.update_id, begin.version, "refused", str(e), started, source)
            return
        if self._pending is not None:
            self._refuse_pending(f"superseded by update {begin.update_id}")
        path = self.store.staging() / f"{begin.update_id}.tar.gz.part"
        self._pending = _Pending(begin, source, started, path, path.open("w+b"), last_activity=time.monotonic())
        logger.info("receiving model update %s: %s %s, %d bytes in %d chunks (%s topic)", begin.update_id,
                    begin.name, begin.version, a.size, a.chunks, source)

    def _check_authentic(self, cmd: Begin | Rollback, raw: dict, source: str) -> None:
        """The signature (when required), that the command is addressed to the topic it came on,
        and, for signed commands, that it is fresh (then its time is the new mark to beat)."""
        check_signature(raw, self.policy)
        check_addressed(cmd, source, self.topics.device)
        if self.policy.public_key is not None:
            check_fresh(cmd, self.policy, self.store.state.get("signed_created"))
            self.store.state["signed_created"] = cmd.created
            self.store.save()

    def _on_chunk(self, update_id: str, index: int, payload: bytes) -> None:
        p = self._pending
        if p is None or p.begin.update_id != update_id:
            if update_id not in self._finished and update_id not in self._orphans:
                if len(self._orphans) >= SEEN_KEEP:
                    self._orphans.clear()
                self._orphans.add(update_id)
                logger.warning("chunk of update %s without its begin message: ignored", update_id)
            return
        a = p.begin.archive
        if index >= a.chunks:
            self._refuse_pending(f"chunk index {index} out of range (the update has {a.chunks} chunks)")
            return
        if len(payload) != a.chunk_length(index):
            self._refuse_pending(f"chunk {index} has {len(payload)} bytes, expected {a.chunk_length(index)}")
            return
        p.last_activity = time.monotonic()
        if index in p.received:
            return  # a QoS 1 redelivery
        p.file.seek(index * a.chunk_size)
        p.file.write(payload)
        p.received.add(index)
        if len(p.received) == a.chunks:
            self._pending = None
            self._apply(p)

    def _on_end(self, end: End) -> None:
        p = self._pending
        if p is None or p.begin.update_id != end.update_id:
            return  # applied, refused or never begun: nothing to do
        a = p.begin.archive
        if end.sha256 != a.sha256 or end.chunks != a.chunks:
            self._refuse_pending("the end message disagrees with the begin message (chunks or sha256)")
            return
        missing = a.chunks - len(p.received)
        logger.warning("update %s: end received with %d of %d chunks missing; waiting up to %.0f s",
                       end.update_id, missing, a.chunks, self.policy.timeout_s)

    def _check_timeout(self) -> None:
        p = self._pending
        if p is None or time.monotonic() - p.last_activity <= self.policy.timeout_s:
            return
        a = p.begin.archive
        missing = sorted(set(range(a.chunks)) - p.received)
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        self._refuse_pending(f"incomplete: {len(p.received)} of {a.chunks} chunks received (missing: {shown}); "
                             f"nothing arrived for update.timeout_s={self.policy.timeout_s:g} s")

    def _drop_pending(self) -> Begin | None:
        p, self._pending = self._pending, None
        if p is None:
            return None
        try:
            p.file.close()
        finally:
            p.path.unlink(missing_ok=True)
        return p.begin

    def _refuse_pending(self, reason: str) -> None:
        p = self._pending
        self._drop_pending()
        if p is not None:
            self._finish(p.begin.update_id, p.begin.version, "refused", reason, p.started, p.source)

    # -- applying ----------------------------------------------------------------------------
    def _apply(self, p: _Pending) -> None:
        b, a = p.begin, p.begin.archive
        incoming = self.store.root / f".incoming-{b.update_id}"
        installed: str | None = None
        try:
            p.file.flush()
            p.file.close()
            manifest = unpack_update(p.path, a, incoming, EXTRACT_FACTOR * self.policy.max_bytes)
            check_claims(b, manifest)
            running = self.target.classifier
            if running is not None:  # a first model (capture mode) has nothing to be compatible with
                check_compatible(manifest, running.manifest, self.policy)
            installed = self.store.install(incoming, manifest, b.update_id)
            classifier = self._load(self.store.root / installed)
            smoke_test(classifier, self.target.recent_frames())
            before = self._current_ref()
            self._swap(classifier)
            ref = model_ref(manifest, b.update_id, installed)
            self.store.activate(ref, before)
            installed = None  # in use now
            self._finish(b.update_id, b.version, "applied", None, p.started, p.source,
                         detail={"from": public_ref(before), "to": public_ref(ref)})
        except UpdateRefused as e:
            self._finish(b.update_id, b.version, "refused", str(e), p.started, p.source)
        except Exception as e:  # noqa: BLE001 - a bug or a full disk must not stop the device
            logger.exception("applying update %s failed", b.update_id)
            self._finish(b.update_id, b.version, "refused", f"internal error while applying ({type(e).__name__}: {e})",
                         p.started, p.source)
        finally:
            p.path.unlink(missing_ok=True)
            remove_tree(incoming, "the extracted update")
            if installed is not None:
                self.store.discard(installed)

    def _load(self, path: Path) -> Any:
        try:
            return self.make_classifier(path)
        except (BundleError, ValueError, RuntimeError, OSError) as e:  # ManifestError, ModelError, no delegate
            why = str(e).replace(f"{self.store.root}{os.sep}", "")  # the store's folder name, not local paths
            raise UpdateRefused(f"the bundle does not load here: {why}") from e

    def _swap(self, classifier: Any) -> None:
        fut = self.target.request_swap(classifier)
        try:
            fut.result(timeout=self.policy.swap_timeout_s)
        except FutureTimeout:
            if fut.cancel():
                raise UpdateRefused(f"the pipeline did not take the new model within {self.policy.swap_timeout_s:g} s")
            fut.result()
        except CancelledError as e:
            raise UpdateRefused("the pipeline stopped before the new model could be swapped in") from e

    def _current_ref(self) -> dict | None:
        """The running model as ``active.json`` names it; None when none runs (capture mode)."""
        if self.target.classifier is None:
            return None
        active = self.store.active
        cur = self.target.classifier.manifest
        if active is not None and active["sha256"] == cur.sha256:
            return dict(active)
        return model_ref(cur, None, None)

    def _rollback(self, cmd: Rollback, raw: dict, started: float, source: str) -> None:
        try:
            self._check_authentic(cmd, raw, source)
        except UpdateRefused as e:  # not remembered (see _on_begin)
            self._finish(cmd.update_id, None, "refused", f"rollback refused: {e}", started, source, remember=False)
            return
        try:
            prev = self.store.previous
            if prev is None:
                raise UpdateRefused("no previous model to roll back to")
            path = self.store.path_of(prev, self.configured_model)
            if path is None:
                raise UpdateRefused("the previous model was the configured one and model is null now")
            classifier = self._load(path)
            smoke_test(classifier, self.target.recent_frames())
            before = self._current_ref()
            self._swap(classifier)
            self.store.swap_back()
            self._finish(cmd.update_id, prev["version"], "rolled_back", None, started, source,
                         detail={"from": public_ref(before), "to": public_ref(prev)})
        except UpdateRefused as e:
            self._finish(cmd.update_id, None, "refused", f"rollback refused: {e}", started, source)
        except Exception as e:  # noqa: BLE001
            logger.exception("rollback %s failed", cmd.update_id)
            self._finish(cmd.update_id, None, "refused", f"rollback refused: internal error ({type(e).__name__}: {e})",
                         started, source)

    # -- reporting ---------------------------------------------------------------------------
    def _finish(self, update_id: str | None, version: str | None, outcome: str, reason: str | None,
                started: float, source: str, detail: dict | None = None, remember: bool = True) -> None:
        """Report an outcome; ``remember`` (only once the command is authentic) records the id as handled."""
        duration = round(time.monotonic() - started, 3)
        last = {"update_id": update_id, "version": version, "outcome": outcome, "reason": reason,
                "duration_s": duration, "source": source}
        if update_id and remember:
            self._finished[update_id] = outcome
            while len(self._finished) > SEEN_KEEP:
                self._finished.popitem(last=False)
        self.store.record(update_id, last, remember=remember)
        self.outcomes.append(last)
        if outcome == "refused":
            logger.warning("model update %s refused: %s", update_id, reason)
        else:
            logger.info("model update %s %s: now running %s %s (%.2f s)", update_id, outcome.replace("_", " "),
                        self.target.classifier.manifest.name, self.target.classifier.manifest.version, duration)
        self._publish_state(last)
        if outcome != "refused" and self.on_model_change is not None:
            try:
                self.on_model_change(self.target.classifier.manifest)
            except Exception:  # noqa: BLE001 - a listener must not break the updater
                logger.exception("on_model_change failed after update %s", update_id)
        event = {"applied": "model_updated", "refused": "model_update_refused", "rolled_back": "model_rolled_back"}
        ev = {"update_id": update_id, "version": version, "duration_s": duration, "source": source,
              **({"reason": reason} if reason else {}), **(detail or {})}
        self.publisher.publish(self.topics.event, messages.encode(messages.event(
            device=self.topics.device, ts=time.time(), run_id=self.run_id, event=event[outcome], detail=ev)), qos=1)

    def _publish_state(self, last_update: dict | None = None) -> None:
        msg = messages.model_state(device=self.topics.device, ts=time.time(),
                                   active=public_ref(self._current_ref()), previous=public_ref(self.store.previous),
                                   last_update=last_update if last_update is not None else self.store.state["last_update"])
        self.publisher.publish(self.topics.model_state, messages.encode(msg), qos=1, retain=True)

"""The store-and-forward queue of the MQTT publisher: a bounded FIFO, recent messages in memory,
the rest in sqlite, written by group commit.

Writing every message to sqlite as it is made costs more than classifying the frame (one WAL
commit each). So :meth:`Outbox.put` stages the message in memory, and :meth:`Outbox.commit`
writes every staged message the broker has not acknowledged yet in one transaction. The owner
(the publisher's sender thread, see :mod:`sdk.mqtt`) calls :meth:`Outbox.commit_if_due`, which
commits once the oldest staged message is ``commit_interval_s`` old; :meth:`Outbox.close` commits
what is left. A message acknowledged while still staged is never written at all, which, with a
broker on the local network, is most of them.

The window this opens, exactly: a message that was neither acknowledged nor committed when the
process was killed (SIGKILL, power loss) is lost, and only such a message, so at most the
messages queued in the last ``commit_interval_s`` (plus the sender thread's scheduling delay)
before the kill. ``commit_interval_s=0`` commits every message before :meth:`put` returns (no
window, one transaction per message). SIGTERM and a normal exit close the outbox, which commits
everything.

Ids grow with every message and every staged id is larger than every id on disk, so the FIFO
order is the id order across both tiers.
"""
from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Iterable

logger = logging.getLogger(__name__)

Row = tuple[int, str, bytes, int, bool]  # id, topic, payload, qos, retain
DEFAULT_COMMIT_INTERVAL_S = 0.1
_DELETE_CHUNK = 500  # ids per DELETE ... IN (...) statement (sqlite's variable limit is 32766)


class Outbox:
    """A bounded, persistent FIFO of messages in sqlite (``:memory:`` for a volatile one).

    When full, the oldest messages are dropped (and counted): memory and disk stay bounded
    during a long outage. ``commit_interval_s``: how long a message may wait in memory before it
    is written (see the module docstring); 0 writes each one at once.
    """

    def __init__(self, path: str | Path = ":memory:", max_messages: int = 10000,
                 commit_interval_s: float = DEFAULT_COMMIT_INTERVAL_S):
        if max_messages < 1:
            raise ValueError(f"max_messages must be >= 1 (got {max_messages})")
        if commit_interval_s < 0:
            raise ValueError(f"commit_interval_s must be >= 0 (got {commit_interval_s})")
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.max_messages = max_messages
        self.commit_interval_s = float(commit_interval_s)
        self.dropped = 0
        self.commits = 0      # transactions that wrote staged messages
        self.written = 0      # messages written to sqlite (the rest were acknowledged while staged)
        self._lock = threading.Lock()
        self._closed = False
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL,"
            " payload BLOB NOT NULL, qos INTEGER NOT NULL, retain INTEGER NOT NULL, created REAL NOT NULL)"
        )
        self._on_disk = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        seq = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        top = self._db.execute("SELECT MAX(id) FROM outbox").fetchone()[0]
        self._next_id = max(seq[0] if seq else 0, top or 0) + 1
        # id -> (topic, payload, qos, retain, wall time, monotonic time), in id order
        self._staged: dict[int, tuple[str, bytes, int, bool, float, float]] = {}
        if self._on_disk:
            logger.info("outbox %s holds %d unsent messages from an earlier run", self.path, self._on_disk)

    def __len__(self) -> int:
        return self._on_disk + len(self._staged)

    @property
    def staged(self) -> int:
        """Messages held in memory only (not yet committed)."""
        return len(self._staged)

    def put(self, topic: str, payload: bytes, qos: int, retain: bool) -> int:
        """Queue a message; returns its id."""
        with self._lock:
            self._check_open()
            excess = len(self) - self.max_messages + 1
            if excess > 0:
                self._drop_oldest(excess)
            row_id = self._next_id
            self._next_id += 1
            self._staged[row_id] = (topic, payload, qos, retain, time.time(), time.monotonic())
            if self.commit_interval_s == 0:
                self._commit()
            return row_id

    def _drop_oldest(self, n: int) -> None:
        from_disk = min(n, self._on_disk)
        if from_disk:
            self._db.execute("DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT ?)", (from_disk,))
            self._on_disk -= from_disk
        for row_id in list(self._staged)[:n - from_disk]:
            del self._staged[row_id]
        self.dropped += n
        if self.dropped == n or self.dropped % 1000 < n:
            logger.warning("outbox full (%d messages): dropped %d oldest so far", self.max_messages, self.dropped)

    def commit_due_in(self) -> float:
        """Seconds until the oldest staged message must be committed (inf when none is staged)."""
        with self._lock:
            if not self._staged:
                return float("inf")
            oldest = self._staged[next(iter(self._staged))][5]
        return max(0.0, oldest + self.commit_interval_s - time.monotonic())

    def commit_if_due(self) -> int:
        """Commit when the oldest staged message is ``commit_interval_s`` old; returns how many were written."""
        if self.commit_due_in() > 0:
            return 0
        return self.commit()

    def commit(self) -> int:
        """Write every staged message to sqlite in one transaction; returns how many."""
        with self._lock:
            return self._commit()

    def _check_open(self) -> None:
        if self._closed:
            raise sqlite3.ProgrammingError(f"outbox {self.path} is closed")

    def _commit(self) -> int:
        self._check_open()
        if not self._staged:
            return 0
        rows = [(i, t, p, q, int(r), c) for i, (t, p, q, r, c, _) in self._staged.items()]
        with self._db:  # one transaction
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT INTO outbox (id, topic, payload, qos, retain, created) VALUES (?, ?, ?, ?, ?, ?)", rows)
        self._staged.clear()
        self._on_disk += len(rows)
        self.commits += 1
        self.written += len(rows)
        return len(rows)

    def peek(self, after_id: int, limit: int) -> list[Row]:
        """Up to ``limit`` messages with an id above ``after_id``, oldest first."""
        with self._lock:
            self._check_open()
            out: list[Row] = []
            if self._on_disk:
                rows = self._db.execute(
                    "SELECT id, topic, payload, qos, retain FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
                    (after_id, limit),
                ).fetchall()
                out = [(r[0], r[1], bytes(r[2]), r[3], bool(r[4])) for r in rows]
            if len(out) < limit:
                for row_id, (t, p, q, r, _, _) in self._staged.items():
                    if row_id > after_id:
                        out.append((row_id, t, p, q, r))
                        if len(out) == limit:
                            break
        return out

    def delete(self, ids: Iterable[int]) -> None:
        """Remove acknowledged messages (staged ones are simply forgotten, never written)."""
        with self._lock:
            on_disk = [i for i in ids if self._staged.pop(i, None) is None]
            for k in range(0, len(on_disk), _DELETE_CHUNK):
                chunk = on_disk[k:k + _DELETE_CHUNK]
                cur = self._db.execute(f"DELETE FROM outbox WHERE id IN ({','.join('?' * len(chunk))})", chunk)
                self._on_disk -= cur.rowcount

    def close(self) -> None:
        """Commit what is staged and close the file."""
        with self._lock:
            if self._closed:
                return
            try:
                self._commit()
            finally:
                self._closed = True
                self._db.close()

"""The feedback store: uncertain frames sent back by devices, waiting for (or holding) a label.

A store is a folder::

    index.sqlite        one row per sample (WAL; safe to read while a collector writes)
    images/<id>.png|jpg the frame the device sent, bytes as received
    inputs/<id>.png|jpg what the model saw (the payload's ``model_input``), bytes as received, when sent

``add(msg)`` takes an ``edgeclf/sample/v1`` payload (see docs/mqtt.md): it validates it against
the JSON schema and checks that each image's bytes, size (and the model input's colour) are what
the payload says. A device classifying named regions of its frames sends one sample per region
(``region``: name and pixel box); a sample is identified by its region as well as its frame.
Duplicates are dropped: the same ``device, run_id, seq, frame_id, region`` key (an at-least-once
redelivery); the same image bytes for the same region; or a perceptual hash within
``dedup_distance`` bits of a recent sample of the same device and region. The hash is of what was
classified: the frame, or for a region sample its model input (the region as the model saw it;
the frame's crop when none was sent), so the regions of one frame are never compared with each
other, and a change inside a small region is not drowned by the unchanged rest of the frame.
``add`` writes the files (temp name, fsync, rename) and only then commits the row, so a crash
never leaves a row without its files (orphan files are swept at the next open). Disk use is
bounded by ``max_samples`` and ``max_bytes``: the oldest pending or skipped samples go first,
labelled ones only when nothing else is left.

Labels come from ``labels`` given once (kept in the store), else from the labels the devices'
``top_k`` named, in the model's index order. A stored sample is a :class:`train.loop.samples.Sample`.
A store made by earlier code is brought to the current layout when opened (its rows kept).
Needs numpy, OpenCV, jsonschema and the standard library only (no TensorFlow, no MQTT).
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import jsonschema
import numpy as np

from sdk.messages import load_schema
from sdk.preprocess import crop_roi
from sdk.uncertainty import hamming, phash
from train.loop.export import export_folder
from train.loop.images import check_colour, decode_field, write_file
from train.loop.samples import FeedbackError, Sample

logger = logging.getLogger(__name__)

STATUSES = ("pending", "labelled", "skipped")
#: Sort orders of :meth:`FeedbackStore.query`: SQL for each.
ORDERS = {"newest": "id DESC", "oldest": "id ASC", "uncertain": "COALESCE(score, 0) ASC, id DESC"}
_EXT = {"png": "png", "jpeg": "jpg"}
_U64 = (1 << 64) - 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS seen_labels (name TEXT PRIMARY KEY, idx INTEGER NOT NULL);
"""
# region: '' for a sample of the whole frame (not NULL, so the UNIQUE key holds for it too);
# region_box: JSON [x, y, w, h]; phash: of what was classified (see the module doc);
# input_colour: the model input's colour, NULL without one or for one stored before it was sent.
_SAMPLES = """
CREATE TABLE IF NOT EXISTS {table} (
    id INTEGER PRIMARY KEY,
    device TEXT NOT NULL, run_id TEXT NOT NULL, seq INTEGER NOT NULL, frame_id INTEGER NOT NULL,
    region TEXT NOT NULL DEFAULT '', region_box TEXT,
    ts REAL NOT NULL, received REAL NOT NULL,
    model_name TEXT NOT NULL, model_version TEXT NOT NULL, model_sha256 TEXT NOT NULL,
    reasons TEXT NOT NULL, top_k TEXT NOT NULL, scores TEXT NOT NULL,
    predicted TEXT, score REAL,
    phash INTEGER NOT NULL, image_sha256 TEXT NOT NULL,
    image_path TEXT NOT NULL, input_path TEXT, input_colour TEXT, image_bytes INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'labelled', 'skipped')),
    label TEXT, labelled_by TEXT, labelled_at REAL,
    UNIQUE (device, run_id, seq, frame_id, region)
)
"""
_INDEXES = """
CREATE INDEX IF NOT EXISTS samples_sha ON samples (image_sha256);
CREATE INDEX IF NOT EXISTS samples_region ON samples (device, region, id);
CREATE INDEX IF NOT EXISTS samples_status ON samples (status, id);
"""
_ADDED = ("region", "region_box", "input_colour")  # columns a store made by earlier code lacks


@dataclass
class CsvReport:
    """Outcome of :meth:`FeedbackStore.import_labels_csv`: rows applied, and one line per bad row."""

    applied: int = 0
    errors: list[str] = field(default_factory=list)


def _region(msg: dict) -> tuple[str, tuple[int, int, int, int] | None]:
    """``(name, box)`` of a sample's region; ``("", None)`` for a sample of the whole frame."""
    if "region" not in msg:
        return "", None
    box = tuple(int(v) for v in msg["region"]["box"])
    if box[2] < 1 or box[3] < 1:
        raise FeedbackError(f"$.region.box: [x, y, w, h] needs w, h >= 1 (got {list(box)})")
    return msg["region"]["name"], box


def _signed(h: int) -> int:
    """sqlite INTEGER is signed 64-bit: store the unsigned hash in two's complement."""
    return h - (1 << 64) if h >= 1 << 63 else h


class FeedbackStore:
    """A folder of collected samples with a sqlite index; see the module docstring.

    ``labels``: the model's labels in index order (kept in the store; later opens may omit it).
    ``max_samples`` / ``max_bytes``: the disk bound (image and input files); kept in the store,
    a value given here replaces the stored one. ``dedup_distance``: perceptual-hash bits under
    which a sample counts as a duplicate of one of the device's last ``dedup_window`` samples.
    """

    def __init__(self, path: str | os.PathLike, *, labels: Sequence[str] | None = None,
                 max_samples: int | None = None, max_bytes: int | None = None, dedup_distance: int = 4,
                 dedup_window: int = 500, timeout: float = 30.0):
        self.path = Path(path)
        for name, value in (("max_samples", max_samples), ("max_bytes", max_bytes)):
            if value is not None and value < 1:
                raise FeedbackError(f"{name} must be >= 1 (got {value})")
        if labels is not None:
            labels = _check_labels(labels)
        self.dedup_distance = dedup_distance
        self.dedup_window = dedup_window
        self.images_dir = self.path / "images"
        self.inputs_dir = self.path / "inputs"
        for d in (self.images_dir, self.inputs_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.stored = self.duplicates = self.invalid = self.evicted = 0
        self._lock = threading.RLock()
        self._validator = jsonschema.Draft202012Validator(load_schema("sample"))
        self._db = sqlite3.connect(self.path / "index.sqlite", timeout=timeout, isolation_level=None,
                                   check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a sample is acknowledged to the broker right after its commit, so the commit must be on disk
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._upgrade()
        self._db.executescript(_INDEXES)
        with self._tx():
            for key, value in (("labels", labels), ("max_samples", max_samples), ("max_bytes", max_bytes)):
                if value is not None:
                    self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))
        self._sweep_orphans()

    # -- plumbing ---------------------------------------------------------------------------
    @contextmanager
    def _tx(self):
        """One write transaction. BEGIN IMMEDIATE takes sqlite's write lock, so it is safe across
        processes, and files written inside it are committed (or orphaned) before anyone else writes."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _meta(self, key: str) -> Any:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def _upgrade(self) -> None:
        """Create the samples table, or bring one made by earlier code to the current layout. sqlite
        cannot change a UNIQUE constraint in place (the region joined the key), so an old table is
        rebuilt: every row copied, the new columns at their defaults (no region, legacy model input)."""
        db = self._db
        with self._tx():
            have = [r[1] for r in db.execute("PRAGMA table_info(samples)")]
            if not have:
                db.execute(_SAMPLES.format(table="samples"))
                return
            if all(c in have for c in _ADDED):
                return
            db.execute("DROP TABLE IF EXISTS samples_upgrade")
            db.execute(_SAMPLES.format(table="samples_upgrade"))
            new = {r[1] for r in db.execute("PRAGMA table_info(samples_upgrade)")}
            cols = ", ".join(c for c in have if c in new)
            n = db.execute(f"INSERT INTO samples_upgrade ({cols}) SELECT {cols} FROM samples").rowcount
            db.execute("DROP TABLE samples")
            db.execute("ALTER TABLE samples_upgrade RENAME TO samples")
        logger.info("%s: upgraded the index to the current layout (%d samples kept; added %s)", self.path, n,
                    ", ".join(c for c in _ADDED if c not in have))

    def _sweep_orphans(self) -> None:
        """Delete files without a row, left by a crash between a file write and its commit, or during
        an eviction. Inside a write transaction, so no other writer is between the two."""
        removed = 0
        with self._tx():
            known = {r[0] for r in self._db.execute(
                "SELECT image_path FROM samples UNION ALL SELECT input_path FROM samples WHERE input_path IS NOT NULL")}
            for d in (self.images_dir, self.inputs_dir):
                for p in d.iterdir():
                    if p.is_file() and p.name not in known:
                        p.unlink(missing_ok=True)
                        removed += 1
        if removed:
            logger.info("%s: removed %d file(s) without an index row (an interrupted write or eviction)",
                        self.path, removed)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> "FeedbackStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- settings -------------------------------------------------------------------------
    @property
    def max_samples(self) -> int | None:
        return self._meta("max_samples")

    @property
    def max_bytes(self) -> int | None:
        return self._meta("max_bytes")

    @property
    def labels_given(self) -> bool:
        """Whether the store was given its labels (else they are the ones the devices' top_k named)."""
        return self._meta("labels") is not None

    def set_label_names(self, labels: Sequence[str]) -> None:
        """Give the store its labels (model index order), as ``labels=`` at open does. Labels already
        on samples must be among them."""
        labels = _check_labels(labels)
        with self._tx():
            used = {r[0] for r in self._db.execute("SELECT DISTINCT label FROM samples WHERE label IS NOT NULL")}
            if used - set(labels):
                raise FeedbackError(f"samples are labelled {', '.join(sorted(used - set(labels)))}, which the new "
                                    f"labels ({', '.join(labels)}) lack")
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('labels', ?)", (json.dumps(labels),))

    def labels(self) -> list[str]:
        """The labels a sample may get: those given to the store, else those the devices' top_k named."""
        given = self._meta("labels")
        if given is not None:
            return given
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT name FROM seen_labels ORDER BY idx, name")]

    # -- adding ---------------------------------------------------------------------------
    def _validate(self, msg: Any) -> None:
        """Raise :class:`FeedbackError` naming the first offending field of a sample payload."""
        err = jsonschema.exceptions.best_match(self._validator.iter_errors(msg))
        if err is not None:
            raise FeedbackError(f"invalid sample at {err.json_path}: {err.message}")

    def add(self, msg: Any) -> int | None:
        """Store a sample payload; its new id, or None for a duplicate. Raises FeedbackError if invalid."""
        try:
            self._validate(msg)
            data, frame = decode_field(msg["image"], "$.image")
            input_data = model_input = None
            if "model_input" in msg:
                input_data, model_input = decode_field(msg["model_input"], "$.model_input")
                check_colour(msg["model_input"], model_input, "$.model_input")
            region, box = _region(msg)
        except FeedbackError:
            self.invalid += 1
            raise
        h = _signed(phash(self._subject(frame, model_input, box)))
        sha = hashlib.sha256(data).hexdigest()
        with self._tx():
            new_id = self._insert(msg, region, box, data, input_data, h, sha)
            evicted = self._evict(new_id) if new_id is not None else []
        for p in evicted:
            p.unlink(missing_ok=True)
        if new_id is None:
            self.duplicates += 1
        else:
            self.stored += 1
        return new_id

    @staticmethod
    def _subject(frame: np.ndarray, model_input: np.ndarray | None, box: tuple | None) -> np.ndarray:
        """What a sample's perceptual hash is of: the frame; for a region sample the model input (the
        region as the model saw it, whatever the frame's scale), else the frame's crop to the box."""
        if box is None:
            return frame
        if model_input is not None:
            return model_input
        try:
            return crop_roi(frame, box)
        except ValueError:  # the box lies outside a frame sent downscaled: hash the frame
            return frame

    def _is_duplicate(self, msg: dict, region: str, h: int, sha: str) -> str | None:
        db = self._db
        key = (msg["device"], msg["run_id"], msg["seq"], msg["frame_id"], region)
        row = db.execute("SELECT id FROM samples WHERE device=? AND run_id=? AND seq=? AND frame_id=? AND region=?",
                         key).fetchone()
        if row:
            return f"same device/run_id/seq/frame_id/region as sample {row[0]}"
        row = db.execute("SELECT id FROM samples WHERE image_sha256 = ? AND region = ?", (sha, region)).fetchone()
        if row:
            return f"same image bytes and region as sample {row[0]}"
        for other_id, other in db.execute("SELECT id, phash FROM samples WHERE device = ? AND region = ? "
                                          "ORDER BY id DESC LIMIT ?", (msg["device"], region, self.dedup_window)):
            if hamming(h & _U64, other & _U64) <= self.dedup_distance:
                return f"perceptual hash within {self.dedup_distance} bits of sample {other_id}"
        return None

    def _insert(self, msg: dict, region: str, box: tuple | None, data: bytes, input_data: bytes | None, h: int,
                sha: str):
        dup = self._is_duplicate(msg, region, h, sha)
        if dup:
            logger.debug("duplicate sample from %s (seq %s%s): %s", msg["device"], msg["seq"],
                         f", region {region}" if region else "", dup)
            return None
        db = self._db
        new_id = self._meta("next_id") or 1  # ids are never reused, even after an eviction
        image_path = self.images_dir / f"{new_id}.{_EXT[msg['image']['format']]}"
        mi = msg.get("model_input")
        input_path = self.inputs_dir / f"{new_id}.{_EXT[mi['format']]}" if mi is not None else None
        write_file(image_path, data)
        if input_path is not None:
            write_file(input_path, input_data)
        top = msg["top_k"]
        db.execute(
            "INSERT INTO samples (id, device, run_id, seq, frame_id, region, region_box, ts, received, model_name,"
            " model_version, model_sha256, reasons, top_k, scores, predicted, score, phash, image_sha256, image_path,"
            " input_path, input_colour, image_bytes)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (new_id, msg["device"], msg["run_id"], msg["seq"], msg["frame_id"], region,
             json.dumps(list(box)) if box is not None else None, msg["ts"], time.time(),
             *_model_columns(msg["model"]), json.dumps(msg["reasons"]),
             json.dumps(top), json.dumps(msg["scores"]), top[0]["label"] if top else None,
             top[0]["score"] if top else None, h, sha, image_path.name,
             input_path.name if input_path else None, mi["colour"] if mi is not None else None,
             len(data) + len(input_data or b"")))
        db.executemany("INSERT OR IGNORE INTO seen_labels VALUES (?, ?)", [(c["label"], c["index"]) for c in top])
        db.execute("INSERT OR REPLACE INTO meta VALUES ('next_id', ?)", (json.dumps(new_id + 1),))
        return new_id

    def _evict(self, keep_id: int) -> list[Path]:
        """Delete the oldest rows over the bound (in the open transaction); their files, to unlink after it."""
        max_n, max_b = self.max_samples, self.max_bytes
        db = self._db
        n, total = db.execute("SELECT COUNT(*), COALESCE(SUM(image_bytes), 0) FROM samples").fetchone()
        files: list[Path] = []
        if (max_n is None or n <= max_n) and (max_b is None or total <= max_b):
            return files
        order = ("SELECT id, image_path, input_path, image_bytes, status FROM samples WHERE id != ? "
                 "ORDER BY status = 'labelled', id")
        warned = False
        for row in db.execute(order, (keep_id,)).fetchall():
            if (max_n is None or n <= max_n) and (max_b is None or total <= max_b):
                break
            if row["status"] == "labelled" and not warned:
                logger.warning("%s: over its bound (%s samples, %s bytes) with only labelled samples left: "
                               "evicting the oldest labelled ones; export them and raise the bound",
                               self.path, max_n, max_b)
                warned = True
            db.execute("DELETE FROM samples WHERE id = ?", (row["id"],))
            files.append(self.images_dir / row["image_path"])
            if row["input_path"]:
                files.append(self.inputs_dir / row["input_path"])
            n, total = n - 1, total - row["image_bytes"]
            self.evicted += 1
        return files

    # -- reading --------------------------------------------------------------------------
    def _sample(self, r: sqlite3.Row) -> Sample:
        return Sample(
            id=r["id"], device=r["device"], run_id=r["run_id"], seq=r["seq"], frame_id=r["frame_id"], ts=r["ts"],
            received=r["received"], model_name=r["model_name"], model_version=r["model_version"],
            reasons=json.loads(r["reasons"]), top_k=json.loads(r["top_k"]), scores=json.loads(r["scores"]),
            predicted=r["predicted"], score=r["score"], label=r["label"], status=r["status"],
            image_path=self.images_dir / r["image_path"],
            input_path=self.inputs_dir / r["input_path"] if r["input_path"] else None,
            region=r["region"] or None, region_box=tuple(json.loads(r["region_box"])) if r["region_box"] else None,
            input_colour=r["input_colour"])

    def _select(self, where: str, args: tuple = (), limit: int | None = None) -> list[Sample]:
        sql = f"SELECT * FROM samples WHERE {where} ORDER BY id" + (" LIMIT ?" if limit is not None else "")
        with self._lock:
            rows = self._db.execute(sql, args + ((limit,) if limit is not None else ())).fetchall()
        return [self._sample(r) for r in rows]

    def pending(self, limit: int | None = None) -> list[Sample]:
        """Samples waiting for a label, oldest first."""
        return self._select("status = 'pending'", (), limit)

    def labelled(self) -> list[Sample]:
        return self._select("status = 'labelled'")

    def get(self, sample_id: int) -> Sample:
        found = self._select("id = ?", (int(sample_id),))
        if not found:
            raise FeedbackError(f"{self.path}: no sample with id {sample_id} (evicted, or never stored)")
        return found[0]

    def query(self, *, status: str | None = "pending", device: str | None = None, model_version: str | None = None,
              reason: str | None = None, predicted: str | None = None, label: str | None = None,
              order: str = "newest", limit: int = 60, offset: int = 0) -> tuple[list[Sample], int]:
        """``(samples, total)``: one page of the samples that match every filter given, and how many
        match in all. ``order``: ``newest`` (last stored first), ``oldest`` or ``uncertain`` (lowest
        top-1 score first). ``status`` None matches every status; ``reason`` matches samples whose
        reasons include it (``low_confidence``, ``small_margin``, ``high_entropy``, ``random_audit``)."""
        if order not in ORDERS:
            raise FeedbackError(f"unknown order {order!r}; valid: {', '.join(ORDERS)}")
        if status is not None and status not in STATUSES:
            raise FeedbackError(f"unknown status {status!r}; valid: {', '.join(STATUSES)}")
        where, args = ["1"], []
        for column, value in (("status", status), ("device", device), ("model_version", model_version),
                              ("predicted", predicted), ("label", label)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if reason is not None:
            where.append("EXISTS (SELECT 1 FROM json_each(samples.reasons) WHERE json_each.value = ?)")
            args.append(reason)
        cond = " AND ".join(where)
        with self._lock:
            total = self._db.execute(f"SELECT COUNT(*) FROM samples WHERE {cond}", args).fetchone()[0]
            rows = self._db.execute(f"SELECT * FROM samples WHERE {cond} ORDER BY {ORDERS[order]} LIMIT ? OFFSET ?",
                                    (*args, int(limit), int(offset))).fetchall()
        return [self._sample(r) for r in rows], total

    def facets(self) -> dict[str, list[str]]:
        """The values the filters of :meth:`query` can take in this store: ``devices``,
        ``model_versions``, ``reasons``, ``predicted``."""
        with self._lock:
            db = self._db
            return {
                "devices": [r[0] for r in db.execute("SELECT DISTINCT device FROM samples ORDER BY device")],
                "model_versions": [r[0] for r in db.execute(  # '' is a capture without a model
                    "SELECT DISTINCT model_version FROM samples WHERE model_version != '' ORDER BY model_version")],
                "reasons": [r[0] for r in db.execute(
                    "SELECT DISTINCT json_each.value FROM samples, json_each(samples.reasons) ORDER BY 1")],
                "predicted": [r[0] for r in db.execute(
                    "SELECT DISTINCT predicted FROM samples WHERE predicted IS NOT NULL ORDER BY predicted")],
            }

    def similar(self, sample_id: int, max_distance: int = 10, status: str | None = "pending") -> list[int]:
        """Ids of the samples of the same device and region whose perceptual hash is within
        ``max_distance`` bits of this one's (the sample itself first, then nearest first): the
        near-duplicates to label in one go."""
        with self._lock:
            row = self._db.execute("SELECT device, region, phash FROM samples WHERE id = ?", (int(sample_id),)).fetchone()
            if row is None:
                raise FeedbackError(f"{self.path}: no sample with id {sample_id} (evicted, or never stored)")
            cond, args = "device = ? AND region = ? AND id != ?", [row["device"], row["region"], int(sample_id)]
            if status is not None:
                cond += " AND status = ?"
                args.append(status)
            others = self._db.execute(f"SELECT id, phash FROM samples WHERE {cond}", args).fetchall()
        near = sorted((hamming(row["phash"] & _U64, h & _U64), i) for i, h in others)
        return [int(sample_id)] + [i for d, i in near if d <= max_distance]

    def counts(self) -> dict:
        """``{"total", "bytes", "pending", "labelled", "skipped", "labels": {label: n}}``."""
        with self._lock:
            n, b = self._db.execute("SELECT COUNT(*), COALESCE(SUM(image_bytes), 0) FROM samples").fetchone()
            by_status = dict(self._db.execute("SELECT status, COUNT(*) FROM samples GROUP BY status").fetchall())
            by_label = dict(self._db.execute("SELECT label, COUNT(*) FROM samples WHERE status = 'labelled' "
                                             "GROUP BY label ORDER BY label").fetchall())
        return {"total": n, "bytes": b, **{s: by_status.get(s, 0) for s in STATUSES}, "labels": by_label}

    # -- labelling ------------------------------------------------------------------------
    def check_label(self, label: str) -> str:
        """``label`` if the store knows it; FeedbackError naming the valid labels otherwise."""
        valid = self.labels()
        if label not in valid:
            raise FeedbackError(f"unknown label {label!r}; valid: {', '.join(valid) or '(none known yet)'}")
        return label

    def _set(self, sample_id: int, status: str, label: str | None, by: str | None) -> None:
        with self._tx():
            cur = self._db.execute(
                "UPDATE samples SET status = ?, label = ?, labelled_by = ?, labelled_at = ? WHERE id = ?",
                (status, label, by, time.time() if by else None, int(sample_id)))
        if cur.rowcount == 0:
            raise FeedbackError(f"{self.path}: no sample with id {sample_id} (evicted, or never stored)")

    def set_label(self, sample_id: int, label: str, by: str = "cli") -> None:
        self._set(sample_id, "labelled", self.check_label(label), by)

    def set_labels(self, sample_ids: Sequence[int], label: str, by: str = "cli") -> int:
        """Label several samples in one transaction (all or none); FeedbackError naming the first
        unknown id. Returns how many were labelled."""
        self.check_label(label)
        ids = [int(i) for i in sample_ids]
        with self._tx():
            known = {r[0] for r in self._db.execute(
                f"SELECT id FROM samples WHERE id IN ({','.join('?' * len(ids))})", ids)} if ids else set()
            missing = [i for i in ids if i not in known]
            if missing:
                raise FeedbackError(f"{self.path}: no sample with id {missing[0]} (evicted, or never stored); "
                                    "nothing was labelled")
            now = time.time()
            self._db.executemany("UPDATE samples SET status = 'labelled', label = ?, labelled_by = ?, labelled_at = ? "
                                 "WHERE id = ?", [(label, by, now, i) for i in ids])
        return len(ids)

    def restore(self, sample_id: int, status: str, label: str | None, by: str = "cli") -> None:
        """Put a sample back to an earlier state (an undo): ``pending``, ``skipped``, or ``labelled``
        with a known ``label``."""
        if status not in STATUSES:
            raise FeedbackError(f"unknown status {status!r}; valid: {', '.join(STATUSES)}")
        if status == "labelled":
            self._set(sample_id, status, self.check_label(label or ""), by)
        else:
            self._set(sample_id, status, None, by if status == "skipped" else None)

    def skip(self, sample_id: int, by: str = "cli") -> None:
        self._set(sample_id, "skipped", None, by)

    def reset(self, sample_id: int) -> None:
        """Back to pending (undo a label or a skip)."""
        self._set(sample_id, "pending", None, None)

    def import_labels_csv(self, path: str | os.PathLike, by: str = "csv") -> CsvReport:
        """Apply labels from a CSV with a header: ``id`` (store id) or ``image`` (file name in images/; a
        path is reduced to its name), and ``label``.

        Good rows are applied (in one transaction); bad rows (unknown id or image, bad label) are
        left out and listed in the report by row number, counting the header as row 1 as a
        spreadsheet does. A file without the needed columns raises FeedbackError.
        """
        path = Path(path)
        report = CsvReport()
        valid = set(self.labels())
        try:
            f = open(path, newline="", encoding="utf-8-sig")
        except OSError as e:
            raise FeedbackError(f"{path}: cannot read ({e.strerror})") from e
        with f:
            reader = csv.DictReader(f)
            cols = reader.fieldnames or []
            key = "id" if "id" in cols else "image" if "image" in cols else None
            if key is None or "label" not in cols:
                raise FeedbackError(f"{path}: needs a header with a 'label' column and an 'id' or 'image' column "
                                    f"(found: {', '.join(cols) or 'no header'})")
            with self._lock:
                by_image = {r[0]: r[1] for r in self._db.execute("SELECT image_path, id FROM samples")}
            ids = set(by_image.values())
            updates = []
            for row in reader:
                where = f"{path.name} row {reader.line_num}"
                ref = (row.get(key) or "").strip()
                label = (row.get("label") or "").strip()
                sample_id = by_image.get(Path(ref).name) if key == "image" else (
                    int(ref) if ref.isdigit() and int(ref) in ids else None)
                if sample_id is None:
                    report.errors.append(f"{where}: unknown {key} {ref!r}")
                elif label not in valid:
                    report.errors.append(f"{where}: label {label!r} is not one of "
                                         f"{', '.join(self.labels()) or '(none known yet)'}")
                else:
                    updates.append(("labelled", label, by, time.time(), sample_id))
        with self._tx():
            self._db.executemany("UPDATE samples SET status = ?, label = ?, labelled_by = ?, labelled_at = ? "
                                 "WHERE id = ?", updates)
        report.applied = len(updates)
        return report

    # -- export ---------------------------------------------------------------------------
    def export_folder(self, out_dir: str | os.PathLike) -> dict[str, int]:
        """The labelled samples as an image folder ``train.data.load_dataset`` reads: see
        :func:`train.loop.export.export_folder`. Returns the count per label."""
        return export_folder(self, out_dir)


def _model_columns(model: dict | None) -> tuple[str, str, str]:
    """``model_name, model_version, model_sha256`` of a sample: empty strings for a capture taken
    without a model (capture mode)."""
    if model is None:
        return "", "", ""
    return model["name"], model["version"], model["sha256"]


def _check_labels(labels: Sequence[str]) -> list[str]:
    out = [str(x) for x in labels]
    if not out or len(set(out)) != len(out) or any(not x.strip() for x in out):
        raise FeedbackError(f"labels must be a non-empty list of distinct, non-blank names (got {out})")
    return out

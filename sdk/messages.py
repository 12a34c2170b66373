"""Payload builders for the MQTT contract (v1); schemas in ``sdk/schemas/*.schema.json``."""
from __future__ import annotations

import base64
import json
from functools import lru_cache
from importlib import resources
from typing import Any, Iterable, Sequence

from .classify import Class

SCHEMAS = ("result", "sample", "metrics", "event", "model-update", "model-state")


def schema_id(kind: str) -> str:
    """The one spelling of a message kind's schema id (its ``schema`` field and its schema's ``$id``)."""
    if kind not in SCHEMAS:
        raise ValueError(f"unknown message kind {kind!r}; valid: {', '.join(SCHEMAS)}")
    return f"edgeclf/{kind}/v1"


def model_info(manifest) -> dict:
    return {"name": manifest.name, "version": manifest.version, "sha256": manifest.sha256}


def ranked(classes: Iterable[Class], labels: Sequence[str]) -> list[dict]:
    return [{"label": labels[c.id], "index": c.id, "score": round(c.score, 6)} for c in classes]


def result(*, device: str, seq: int, run_id: str, ts: float, frame_id: int, model: dict, top_k: list[dict],
           latency_ms: dict, box: Sequence[int] | None = None, region: str | None = None) -> dict:
    msg = {"schema": schema_id("result"), "device": device, "seq": seq, "run_id": run_id, "ts": round(ts, 6),
           "frame_id": frame_id, "model": model, "top_k": top_k,
           "latency_ms": {k: round(v, 3) for k, v in latency_ms.items()}}
    if box is not None:
        msg["box"] = [int(v) for v in box]
    if region is not None:
        msg["region"] = region
    return msg


def image_field(data: bytes, fmt: str, width: int, height: int, **extra: Any) -> dict:
    """An encoded image as a payload field: format, size, byte count, base64 data (and ``extra``)."""
    return {"format": fmt, "width": width, "height": height, **extra, "bytes": len(data),
            "data": base64.b64encode(data).decode("ascii")}


def sample(*, device: str, seq: int, run_id: str, ts: float, frame_id: int, model: dict | None, reasons: list[str],
           top_k: list[dict], scores: Sequence[float], stats: dict, image: bytes, image_format: str,
           width: int, height: int, model_input: dict | None = None, region: dict | None = None) -> dict:
    """``model_input``: :func:`image_field` of what the model saw, with its ``colour``; ``region``:
    ``{"name", "box": [x, y, w, h]}`` when the frame's named region was classified. A capture taken
    without a model (capture mode): ``model`` None, ``top_k`` and ``scores`` empty, ``stats`` values None."""
    msg = {"schema": schema_id("sample"), "device": device, "seq": seq, "run_id": run_id, "ts": round(ts, 6),
           "frame_id": frame_id, "model": model, "reasons": reasons, "top_k": top_k,
           "scores": [round(float(s), 6) for s in scores],
           **{k: None if v is None else round(float(v), 6) for k, v in stats.items()},
           "image": image_field(image, image_format, width, height)}
    if model_input is not None:
        msg["model_input"] = model_input
    if region is not None:
        msg["region"] = {"name": region["name"], "box": [int(v) for v in region["box"]]}
    return msg


def metrics(*, device: str, ts: float, run_id: str, model: dict | None, **fields: Any) -> dict:
    """``model`` None: a device in capture mode without a model."""
    return {"schema": schema_id("metrics"), "device": device, "run_id": run_id, "ts": round(ts, 6),
            "model": model, **fields}


def event(*, device: str, ts: float, run_id: str, event: str, detail: dict | None = None) -> dict:
    return {"schema": schema_id("event"), "device": device, "run_id": run_id, "ts": round(ts, 6),
            "event": event, "detail": detail or {}}


def model_state(*, device: str, ts: float, active: dict | None, previous: dict | None,
                last_update: dict | None) -> dict:
    """Retained on ``model/state``: the active model, the one a rollback returns to, the last outcome."""
    return {"schema": schema_id("model-state"), "device": device, "ts": round(ts, 6), "active": active,
            "previous": previous, "last_update": last_update}


def encode(msg: dict) -> bytes:
    return json.dumps(msg, separators=(",", ":"), allow_nan=False).encode()


@lru_cache(maxsize=None)
def load_schema(kind: str) -> dict:
    """The JSON schema of a message kind (result, sample, metrics, event, model-update, model-state)."""
    if kind not in SCHEMAS:
        raise ValueError(f"unknown message kind {kind!r}; valid: {', '.join(SCHEMAS)}")
    return json.loads((resources.files("sdk") / "schemas" / f"{kind}.schema.json").read_text())

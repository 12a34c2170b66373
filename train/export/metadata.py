"""Embed ``labels.txt`` in a .tflite file as metadata, and read it back.

Uses TensorFlow's own flatbuffer tools (``flatbuffer_utils`` + ``schema_py_generated``), not
tflite-support (which pins protobuf 3.20 and breaks TensorFlow 2.21). The labels become a model
buffer referenced by a ``Metadata`` entry named ``labels.txt`` (one label per line, UTF-8);
LiteRT ignores metadata it does not know, so the model still loads anywhere. A device without
TensorFlow can read the entry with any flatbuffer reader of the TFLite schema, or use the
bundle's ``labels.txt`` / manifest.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

LABELS_METADATA = "labels.txt"


def _fb():
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    return flatbuffer_utils, schema


def embed_labels(model: bytes, labels: list[str], name: str = LABELS_METADATA) -> bytes:
    """Return ``model`` with ``labels`` stored as metadata ``name`` (replacing an earlier entry)."""
    if not labels:
        raise ValueError("labels must not be empty")
    bad = [lab for lab in labels if "\n" in lab or "\r" in lab]
    if bad:
        raise ValueError(f"labels must not contain line breaks: {bad!r}")
    fu, schema = _fb()
    obj = fu.convert_bytearray_to_object(bytearray(model))
    payload = ("\n".join(labels) + "\n").encode("utf-8")
    buf = schema.BufferT()
    buf.data = np.frombuffer(payload, dtype=np.uint8).copy()
    metadata = []
    for m in obj.metadata or []:
        if _name(m.name) == name:
            obj.buffers[m.buffer].data = None  # drop the replaced payload
        else:
            metadata.append(m)
    obj.buffers.append(buf)
    entry = schema.MetadataT()
    entry.name = name
    entry.buffer = len(obj.buffers) - 1
    metadata.append(entry)
    obj.metadata = metadata
    return bytes(fu.convert_object_to_bytearray(obj))


def embed_labels_file(path: str | Path, labels: list[str]) -> None:
    """Embed ``labels`` into the .tflite at ``path``, in place."""
    p = Path(path)
    p.write_bytes(embed_labels(p.read_bytes(), labels))


def read_labels(model: bytes | str | Path, name: str = LABELS_METADATA) -> list[str] | None:
    """The labels embedded in a .tflite (bytes or a path), or None when it has none."""
    data = Path(model).read_bytes() if isinstance(model, (str, Path)) else model
    fu, _ = _fb()
    obj = fu.convert_bytearray_to_object(bytearray(data))
    for m in obj.metadata or []:
        if _name(m.name) == name:
            raw = obj.buffers[m.buffer].data
            if raw is None:
                return []
            text = bytes(np.asarray(raw, dtype=np.uint8)).decode("utf-8")
            return text.splitlines()
    return None


def _name(raw) -> str:
    return raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else str(raw)

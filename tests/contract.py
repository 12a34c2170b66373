"""Check received MQTT payloads against the contract's JSON schemas (sdk/schemas)."""
from __future__ import annotations

import json

import jsonschema

from sdk.messages import load_schema

_VALIDATORS: dict[str, jsonschema.Draft202012Validator] = {}


def validate(kind: str, payloads) -> list[dict]:
    """Decode each payload, validate it against the ``kind`` schema (``result``, ``event``, ...); the messages."""
    if kind not in _VALIDATORS:
        _VALIDATORS[kind] = jsonschema.Draft202012Validator(load_schema(kind))
    out = []
    for p in payloads:
        msg = json.loads(p)
        _VALIDATORS[kind].validate(msg)
        out.append(msg)
    return out

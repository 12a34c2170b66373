"""The ``edgeclf/model-update/v1`` messages (pydantic, unknown keys forbidden) and their parsing.

:func:`parse_command` is the parser of record for what arrives on a ``model/set`` topic;
:func:`signed_bytes` is what a signature covers; :func:`model_update_schema` is the checked-in JSON
schema, generated from :data:`Command`.
"""
from __future__ import annotations

import json
import math
import re
from datetime import datetime
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from .. import messages
from ..topics import FLEET

UPDATE_SCHEMA = messages.schema_id("model-update")
SIGNING_CONTEXT = UPDATE_SCHEMA.encode("ascii") + b"\n"
DEFAULT_CHUNK_SIZE = 256 * 1024
MAX_CHUNK_SIZE = 16 * 1024 * 1024


class UpdateRefused(Exception):
    """An update (or rollback) the device will not apply; the message says what was wrong."""


_HEX64 = r"^[0-9a-f]{64}$"
_UPDATE_ID = r"^[0-9a-f]{8,64}$"
_TEXT = r"^[^\x00-\x1f]+$"
_TO = r"^[A-Za-z0-9_.-]{1,200}$"  # a device id (a topic segment) or "fleet"
_TO_DESCRIPTION = ("Who the command is for: the device id on <prefix>/v1/<device>/model/set, or 'fleet' on "
                   "<prefix>/v1/fleet/model/set; a device refuses a command whose 'to' does not match the topic it "
                   "arrived on. Covered by the signature, so a signed command cannot be replayed on another "
                   "device's or the fleet's topic.")
_SIGNATURE_DESCRIPTION = ("ed25519 signature over the canonical bytes of this message without 'signature' (see "
                          f"docs/mqtt.md: '{UPDATE_SCHEMA}\\n' + JSON with sorted keys, no spaces, ASCII); "
                          "absent (or null) when unsigned.")


class _Msg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Signature(_Msg):
    alg: Literal["ed25519"] = Field(description="Signature algorithm.")
    key_id: str = Field(min_length=16, max_length=16, pattern=r"^[0-9a-f]{16}$",
                        description="First 16 hex digits of sha256 of the raw 32-byte public key.")
    value: str = Field(min_length=88, max_length=88, pattern=r"^[A-Za-z0-9+/]{86}==$",
                       description="base64 of the 64-byte signature.")


class ArchiveInfo(_Msg):
    format: Literal["tar.gz"] = Field("tar.gz", description="Packing of the bundle directory.")
    size: int = Field(ge=1, description="Bytes of the archive.")
    sha256: str = Field(min_length=64, max_length=64, pattern=_HEX64, description="sha256 of the whole archive.")
    chunks: int = Field(ge=1, description="Number of chunk messages: ceil(size / chunk_size) (checked by the "
                                          "device; a JSON schema cannot say it).")
    chunk_size: int = Field(ge=1, description="Bytes per chunk; the last one may be shorter.")

    @model_validator(mode="after")
    def _consistent(self) -> "ArchiveInfo":
        if self.chunks != math.ceil(self.size / self.chunk_size):
            raise ValueError(f"chunks {self.chunks} != ceil(size {self.size} / chunk_size {self.chunk_size})")
        return self

    def chunk_length(self, index: int) -> int:
        return self.chunk_size if index < self.chunks - 1 else self.size - self.chunk_size * (self.chunks - 1)


class _Command(_Msg):
    schema_id: Literal[UPDATE_SCHEMA] = Field(  # type: ignore[valid-type]  # a constant, spelled in sdk.messages
        alias="schema", description="Schema id of this message.")
    update_id: str = Field(pattern=_UPDATE_ID, description="Random hex id of this update; chunk topics carry it.")


class Begin(_Command):
    """Announces an update: then ``archive.chunks`` binary messages on <set topic>/<update_id>/<index>, then ``end``."""
    kind: Literal["begin"] = Field(description="Command kind.")
    name: str = Field(min_length=1, max_length=200, pattern=_TEXT, description="Manifest name of the bundle.")
    version: str = Field(min_length=1, max_length=200, pattern=_TEXT, description="Manifest version of the bundle.")
    target: str = Field(min_length=1, max_length=200, pattern=_TEXT,
                        description="Export target of the bundle (manifest target).")
    to: str = Field(pattern=_TO, description=_TO_DESCRIPTION)
    archive: ArchiveInfo = Field(description="The packed bundle directory and how it is chunked.")
    manifest_sha256: str = Field(min_length=64, max_length=64, pattern=_HEX64,
                                 description="sha256 of the model file, as in the bundle's manifest.")
    created: str = Field(description="ISO 8601 time with a zone the command was made. Signed; a device with "
                                     "update.public_key refuses a command not later than the last signed one it "
                                     "accepted (replay protection).")
    signature: Signature | None = Field(None, description=_SIGNATURE_DESCRIPTION)


class End(_Command):
    """Closes an update once its chunks are sent; the device then verifies and applies it."""
    kind: Literal["end"] = Field(description="Command kind.")
    chunks: int = Field(ge=1, description="Chunk messages sent; must equal begin's archive.chunks.")
    sha256: str = Field(min_length=64, max_length=64, pattern=_HEX64,
                        description="sha256 of the whole archive; must equal begin's archive.sha256.")


class Rollback(_Command):
    """Swaps back to the previous model."""
    kind: Literal["rollback"] = Field(description="Command kind.")
    to: str = Field(pattern=_TO, description=_TO_DESCRIPTION)
    created: str = Field(description="ISO 8601 time with a zone the rollback was made; signed, and checked like "
                                     "begin's.")
    signature: Signature | None = Field(None, description=_SIGNATURE_DESCRIPTION)


Command = Annotated[Union[Begin, End, Rollback], Field(discriminator="kind")]
_COMMAND: TypeAdapter = TypeAdapter(Command)


def model_update_schema() -> dict:
    """The JSON schema of ``edgeclf/model-update/v1``, generated from :data:`Command`
    (``sdk/schemas/model-update.schema.json``; ``python -m sdk.schemagen`` rewrites it).

    :func:`parse_command` stays the parser of record: it also checks ``archive.chunks ==
    ceil(size / chunk_size)``, and its patterns' ``$`` is the end of the string (as in ECMA 262),
    where Python's ``re`` (and so the ``jsonschema`` package) also accepts a trailing newline."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": UPDATE_SCHEMA,
            "title": "A model update command on <prefix>/v1/<device>/model/set or <prefix>/v1/fleet/model/set",
            "description": "begin, then archive.chunks binary messages on <set topic>/<update_id>/<index>, then "
                           "end; or rollback.",
            **_COMMAND.json_schema()}


def validation_errors(e: ValidationError) -> str:
    """A pydantic error as one line: ``field.path: message; ...``."""
    return "; ".join(f"{'.'.join(str(p) for p in err['loc']) or '(message)'}: {err['msg']}" for err in e.errors())


def parse_command(payload: bytes) -> tuple[Begin | End | Rollback, dict]:
    """A JSON command from a ``model/set`` topic: the validated model and the raw dict (for the signature)."""
    try:
        raw = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as e:
        raise UpdateRefused(f"update command is not JSON ({e})") from e
    if not isinstance(raw, dict):
        raise UpdateRefused(f"update command must be a JSON object, not {type(raw).__name__}")
    try:
        return _COMMAND.validate_python(raw), raw
    except ValidationError as e:
        kind = raw.get("kind")
        what = f"'{kind}' command" if kind in ("begin", "end", "rollback") else "update command (kind: begin, end, rollback)"
        raise UpdateRefused(f"invalid {what}: {validation_errors(e)}") from e


def encode(msg: dict) -> bytes:
    return json.dumps(msg, separators=(",", ":"), allow_nan=False).encode()


def signed_bytes(msg: dict) -> bytes:
    """What the signature covers: the command without ``signature``, as canonical JSON
    (sorted keys, no spaces, ASCII), after the context line ``edgeclf/model-update/v1``."""
    body = {k: v for k, v in msg.items() if k != "signature"}
    return SIGNING_CONTEXT + json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                                        allow_nan=False).encode()


def parse_created(value: str) -> datetime:
    """A command's signed ``created`` time (ISO 8601 with a zone), or :class:`UpdateRefused`."""
    try:
        t = datetime.fromisoformat(value)
    except (TypeError, ValueError) as e:
        raise UpdateRefused(f"created {value!r} is not an ISO 8601 time") from e
    if t.tzinfo is None:
        raise UpdateRefused(f"created {value!r} has no time zone (e.g. +00:00)")
    return t


def check_to(to: str) -> str:
    """``to`` if it can address a command (a device id or ``"fleet"``), else :class:`ValueError`."""
    if not isinstance(to, str) or not re.fullmatch(_TO[1:-1], to):
        raise ValueError(f"invalid target {to!r}: a device id or {FLEET!r}")
    return to


def peek(payload: bytes, key: str) -> str | None:
    """The string ``key`` of a JSON payload that may not be a valid command (for reporting a refusal)."""
    try:
        v = json.loads(payload).get(key)
    except (ValueError, AttributeError, UnicodeDecodeError):
        return None
    return v if isinstance(v, str) and len(v) <= 200 else None


def peek_update_id(payload: bytes) -> str | None:
    """The ``update_id`` of a JSON payload, when it has a valid one."""
    v = peek(payload, "update_id")
    return v if v and re.fullmatch(_UPDATE_ID[1:-1], v) else None

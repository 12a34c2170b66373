"""The commands a host sends: :func:`make_update` (an :class:`Update`: begin, chunks, end) and
:func:`make_rollback`, each addressed to a device or the fleet and validated against the models a
device parses with. Signing is handed in as a :data:`~sdk.update.signing.Signer` (the host's
:func:`train.loop.keys.signer`): the device package holds no private-key code.
"""
from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone

from pydantic import BaseModel

from ..bundle import Manifest
from ..topics import model_chunk
from .signing import Signer
from .wire import DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, UPDATE_SCHEMA, Begin, Rollback, check_to, encode


def new_update_id() -> str:
    return secrets.token_hex(16)


def now_iso() -> str:
    """The current UTC time as a command's ``created`` (ISO 8601, milliseconds)."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


@dataclass
class Update:
    """An update ready to send to one target (``begin["to"]``): ``begin``, the archive's ``chunks``, ``end``."""

    update_id: str
    begin: dict
    chunks: list[bytes]
    end: dict

    def addressed_to(self, to: str, signer: Signer | None = None) -> "Update":
        """The same update (same id, chunks shared, not copied) with a ``begin`` for ``to``
        (another device id, or ``"fleet"``), signed by ``signer`` when given."""
        body = {k: v for k, v in self.begin.items() if k != "signature"}
        return Update(self.update_id, address(body, to, signer, Begin), self.chunks, self.end)

    def messages(self, set_topic: str) -> list[tuple[str, bytes]]:
        """``(topic, payload)`` in sending order for one ``model/set`` topic."""
        out = [(set_topic, encode(self.begin))]
        out += [(model_chunk(set_topic, self.update_id, i), c) for i, c in enumerate(self.chunks)]
        out.append((set_topic, encode(self.end)))
        return out


def address(body: dict, to: str, signer: Signer | None, model: type[BaseModel]) -> dict:
    """``body`` for ``to``, signed when ``signer`` is given (the signature covers ``to``) and validated."""
    msg = {**body, "to": check_to(to)}
    if signer is not None:
        msg = signer(msg)
    model.model_validate(msg)  # what we send must be what a device accepts
    return msg


def make_update(archive: bytes, manifest: Manifest, *, to: str, chunk_size: int = DEFAULT_CHUNK_SIZE,
                signer: Signer | None = None, update_id: str | None = None, created: str | None = None) -> Update:
    """Split ``archive`` (from :func:`~sdk.update.archive.pack_bundle`) into an :class:`Update` for
    ``to`` (a device id, or ``"fleet"`` for the fleet topic), signed when ``signer`` is given. For
    more targets use :meth:`Update.addressed_to` (the chunks are shared)."""
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk_size must be 1..{MAX_CHUNK_SIZE} bytes (got {chunk_size})")
    if not archive:
        raise ValueError("empty archive")
    uid = update_id or new_update_id()
    digest = hashlib.sha256(archive).hexdigest()
    chunks = [archive[i:i + chunk_size] for i in range(0, len(archive), chunk_size)]
    begin = {"schema": UPDATE_SCHEMA, "kind": "begin", "update_id": uid, "name": manifest.name,
             "version": manifest.version, "target": manifest.target,
             "archive": {"format": "tar.gz", "size": len(archive), "sha256": digest, "chunks": len(chunks),
                         "chunk_size": chunk_size},
             "manifest_sha256": manifest.sha256, "created": created or now_iso()}
    begin = address(begin, to, signer, Begin)
    end = {"schema": UPDATE_SCHEMA, "kind": "end", "update_id": uid, "chunks": len(chunks), "sha256": digest}
    return Update(uid, begin, chunks, end)


def make_rollback(*, to: str, signer: Signer | None = None, update_id: str | None = None,
                  created: str | None = None) -> dict:
    """A ``rollback`` command for ``to`` (a device id, or ``"fleet"``), signed when ``signer`` is given."""
    msg = {"schema": UPDATE_SCHEMA, "kind": "rollback", "update_id": update_id or new_update_id(),
           "created": created or now_iso()}
    return address(msg, to, signer, Rollback)

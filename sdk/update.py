"""Model updates over MQTT: the wire format (shared with ``train.publish``) and the device's updater.

Wire format (``edgeclf/model-update/v1``, docs/mqtt.md): the bundle directory packed as a
deterministic tar.gz (:func:`pack_bundle`) is sent as QoS 1 messages on the device's (or the
fleet's) ``model/set`` topic: a JSON ``begin`` (:class:`Begin`: ``to``, name, version, target, archive
size / sha256 / chunks / chunk_size, the model's sha256, an optional ed25519 signature), then the
archive's bytes in ``chunks`` binary messages on ``<set topic>/<update_id>/<index>``, then a JSON
``end``. A ``rollback`` command swaps back to the previous model. The signature covers
:func:`signed_bytes` of the command: the message without ``signature`` as canonical JSON.

On the device, :class:`ModelUpdater` stages the chunks in a file (bounded by
``max_bytes``), verifies size, sha256 and signature, extracts the archive safely into a
:class:`ModelStore`, loads it with :func:`sdk.runtime.load_bundle`, checks it against the running
model, smoke-tests it and hands it to the pipeline, which swaps it in between two frames. Every
outcome is published (retained) on ``model/state`` and as an ``event``.
"""
from __future__ import annotations

import base64
import collections
import gzip
import hashlib
import io
import json
import logging
import math
import os
import queue
import re
import secrets
import shutil
import sys
import tarfile
import threading
import time
import zlib
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Callable, Literal, Protocol, Sequence, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from . import classify, messages
from .bundle import MANIFEST_FILE, BundleError, Manifest, load_manifest, sha256_file
from .topics import FLEET, Topics, parse_model_chunk

logger = logging.getLogger(__name__)

UPDATE_SCHEMA = messages.schema_id("model-update")
SIGNING_CONTEXT = UPDATE_SCHEMA.encode("ascii") + b"\n"
DEFAULT_CHUNK_SIZE = 256 * 1024
MAX_CHUNK_SIZE = 16 * 1024 * 1024
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
EXTRACT_FACTOR = 4          # the extracted bundle may be at most this many times max_bytes
MAX_MEMBERS = 1000          # files in an update archive
STATE_FILE = "active.json"
STAGING_DIR = ".staging"
SEEN_KEEP = 200             # update ids remembered (duplicates after a redelivery are ignored)
OUTCOMES = ("applied", "refused", "rolled_back")
SIGN_KEY_PASSWORD_ENV = "EDGECLF_SIGN_KEY_PASSWORD"


class UpdateRefused(Exception):
    """An update (or rollback) the device will not apply; the message says what was wrong."""


# -- messages ---------------------------------------------------------------------------------
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


def _errors(e: ValidationError) -> str:
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
        raise UpdateRefused(f"invalid {what}: {_errors(e)}") from e


def encode(msg: dict) -> bytes:
    return json.dumps(msg, separators=(",", ":"), allow_nan=False).encode()


def signed_bytes(msg: dict) -> bytes:
    """What the signature covers: the command without ``signature``, as canonical JSON
    (sorted keys, no spaces, ASCII), after the context line ``edgeclf/model-update/v1``."""
    body = {k: v for k, v in msg.items() if k != "signature"}
    return SIGNING_CONTEXT + json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                                        allow_nan=False).encode()


# -- keys and signatures ----------------------------------------------------------------------
def _crypto():
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("signed model updates need the 'cryptography' package: pip install 'edgeclf[device]'") from e
    return serialization, ed25519


def key_id(public_key: Any) -> str:
    """First 16 hex digits of the sha256 of the raw 32-byte ed25519 public key."""
    serialization, _ = _crypto()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_public_key(path: str | Path) -> Any:
    """An ed25519 public key from a PEM file or a file holding the raw 32-byte key in base64."""
    serialization, ed25519 = _crypto()
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"public key file not found: {path}")
    data = path.read_bytes()
    try:
        if b"-----BEGIN" in data:
            key = serialization.load_pem_public_key(data)
        else:
            key = ed25519.Ed25519PublicKey.from_public_bytes(base64.b64decode(data.strip(), validate=True))
    except ValueError as e:
        raise ValueError(f"{path}: not an ed25519 public key (PEM, or 32 raw bytes in base64): {e}") from e
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise ValueError(f"{path}: a {type(key).__name__}, not an ed25519 public key")
    return key


def load_private_key(path: str | Path) -> Any:
    """An ed25519 private key from a PEM file (password, if any, from $EDGECLF_SIGN_KEY_PASSWORD)
    or a file holding the raw 32-byte seed in base64."""
    serialization, ed25519 = _crypto()
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"signing key file not found: {path}")
    data = path.read_bytes()
    password = os.environ.get(SIGN_KEY_PASSWORD_ENV)
    try:
        if b"-----BEGIN" in data:
            key = serialization.load_pem_private_key(data, password.encode() if password else None)
        else:
            key = ed25519.Ed25519PrivateKey.from_private_bytes(base64.b64decode(data.strip(), validate=True))
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: not a usable ed25519 private key (PEM, or 32 raw bytes in base64; an encrypted "
                         f"PEM needs ${SIGN_KEY_PASSWORD_ENV}): {e}") from e
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ValueError(f"{path}: a {type(key).__name__}, not an ed25519 private key")
    return key


def generate_keypair(out_prefix: str | Path, force: bool = False) -> tuple[Path, Path, str]:
    """Write ``<prefix>.key`` (PKCS#8 PEM, mode 0600) and ``<prefix>.pub`` (PEM); returns them and the key id."""
    serialization, ed25519 = _crypto()
    key_path, pub_path = Path(f"{out_prefix}.key"), Path(f"{out_prefix}.pub")
    for p in (key_path, pub_path):
        if p.exists() and not force:
            raise ValueError(f"{p} exists; refusing to overwrite a key (remove it first)")
    key_path.parent.mkdir(parents=True, exist_ok=True)
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    if force and key_path.exists():
        key_path.unlink()
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    os.chmod(key_path, 0o600)  # whatever the umask
    pub = key.public_key()
    pub_path.write_bytes(pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return key_path, pub_path, key_id(pub)


def sign(msg: dict, private_key: Any) -> dict:
    """``msg`` with an ed25519 ``signature`` over :func:`signed_bytes`."""
    value = private_key.sign(signed_bytes(msg))
    return {**msg, "signature": {"alg": "ed25519", "key_id": key_id(private_key.public_key()),
                                 "value": base64.b64encode(value).decode("ascii")}}


def verify(msg: dict, public_key: Any) -> None:
    """Raise :class:`UpdateRefused` unless ``msg`` carries a valid signature by ``public_key``."""
    from cryptography.exceptions import InvalidSignature

    expected = key_id(public_key)
    sig = msg.get("signature")
    if not sig:
        raise UpdateRefused(f"unsigned {msg.get('kind', 'command')} refused: this device requires updates signed "
                            f"by key {expected} (update.public_key)")
    if sig.get("key_id") != expected:
        raise UpdateRefused(f"signed by key {sig.get('key_id')}, but this device trusts key {expected} "
                            "(update.public_key)")
    try:
        public_key.verify(base64.b64decode(sig["value"], validate=True), signed_bytes(msg))
    except (InvalidSignature, ValueError) as e:
        raise UpdateRefused(f"bad signature by key {expected}: the signed fields (version, archive sha256/size...) "
                            "were altered or the signature is corrupt") from e


# -- packing ----------------------------------------------------------------------------------
def pack_bundle(bundle_dir: str | Path) -> bytes:
    """The bundle directory as a deterministic tar.gz: sorted names, mtime 0, no owners, fixed modes."""
    root = Path(bundle_dir)
    if not (root / MANIFEST_FILE).is_file():
        raise BundleError(f"{root}: not a model bundle (no {MANIFEST_FILE})")
    paths = sorted(root.rglob("*"), key=lambda p: p.relative_to(root).as_posix())
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", fileobj=buf, mode="wb", mtime=0, compresslevel=9) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for p in paths:
                info = tarfile.TarInfo(p.relative_to(root).as_posix())
                info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                if p.is_symlink():
                    raise BundleError(f"{p}: symbolic links cannot be packed into an update")
                if p.is_dir():
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
                elif p.is_file():
                    info.size, info.mode = p.stat().st_size, 0o644
                    with p.open("rb") as f:
                        tar.addfile(info, f)
                else:
                    raise BundleError(f"{p}: not a regular file or folder")
    return buf.getvalue()


def new_update_id() -> str:
    return secrets.token_hex(16)


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def parse_created(value: str) -> datetime:
    """A command's signed ``created`` time (ISO 8601 with a zone), or :class:`UpdateRefused`."""
    try:
        t = datetime.fromisoformat(value)
    except (TypeError, ValueError) as e:
        raise UpdateRefused(f"created {value!r} is not an ISO 8601 time") from e
    if t.tzinfo is None:
        raise UpdateRefused(f"created {value!r} has no time zone (e.g. +00:00)")
    return t


@dataclass
class Update:
    """An update ready to send to one target (``begin["to"]``): ``begin``, the archive's ``chunks``, ``end``."""

    update_id: str
    begin: dict
    chunks: list[bytes]
    end: dict

    def addressed_to(self, to: str, sign_key: Any = None) -> "Update":
        """The same update (same id, chunks shared, not copied) with a ``begin`` for ``to``
        (another device id, or ``"fleet"``), signed with ``sign_key`` when given."""
        body = {k: v for k, v in self.begin.items() if k != "signature"}
        return Update(self.update_id, _address(body, to, sign_key, Begin), self.chunks, self.end)

    def messages(self, set_topic: str) -> list[tuple[str, bytes]]:
        """``(topic, payload)`` in sending order for one ``model/set`` topic."""
        from .topics import model_chunk

        out = [(set_topic, encode(self.begin))]
        out += [(model_chunk(set_topic, self.update_id, i), c) for i, c in enumerate(self.chunks)]
        out.append((set_topic, encode(self.end)))
        return out


def _check_to(to: str) -> str:
    if not isinstance(to, str) or not re.fullmatch(_TO[1:-1], to):
        raise ValueError(f"invalid target {to!r}: a device id or {FLEET!r}")
    return to


def _address(body: dict, to: str, sign_key: Any, model: type[_Msg]) -> dict:
    """``body`` for ``to``, signed when ``sign_key`` is given (the signature covers ``to``) and validated."""
    msg = {**body, "to": _check_to(to)}
    if sign_key is not None:
        msg = sign(msg, sign_key)
    model.model_validate(msg)  # what we send must be what a device accepts
    return msg


def make_update(archive: bytes, manifest: Manifest, *, to: str, chunk_size: int = DEFAULT_CHUNK_SIZE,
                sign_key: Any = None, update_id: str | None = None, created: str | None = None) -> Update:
    """Split ``archive`` (from :func:`pack_bundle`) into an :class:`Update` for ``to`` (a device id,
    or ``"fleet"`` for the fleet topic), signed when ``sign_key`` is given. For more targets use
    :meth:`Update.addressed_to` (the chunks are shared)."""
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
             "manifest_sha256": manifest.sha256, "created": created or _now_iso()}
    begin = _address(begin, to, sign_key, Begin)
    end = {"schema": UPDATE_SCHEMA, "kind": "end", "update_id": uid, "chunks": len(chunks), "sha256": digest}
    return Update(uid, begin, chunks, end)


def make_rollback(*, to: str, sign_key: Any = None, update_id: str | None = None, created: str | None = None) -> dict:
    """A ``rollback`` command for ``to`` (a device id, or ``"fleet"``), signed when ``sign_key`` is given."""
    msg = {"schema": UPDATE_SCHEMA, "kind": "rollback", "update_id": update_id or new_update_id(),
           "created": created or _now_iso()}
    return _address(msg, to, sign_key, Rollback)


# -- safe extraction --------------------------------------------------------------------------
def safe_extract(archive: str | Path, dest: str | Path, max_total: int) -> None:
    """Extract a tar.gz refusing absolute paths, ``..``, links, devices, too many or too large members.

    The members are checked here on every Python; tarfile's ``data`` filter is used as well where
    it exists (3.10.12+, 3.11.4+).
    """
    dest = Path(dest)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            # One header at a time, each checked before the next is read (tar.getmembers() would
            # decompress everything first: millions of entries or a huge member before any limit).
            # Reading to the end also makes a truncated archive fail here, before extracting.
            members: list[tarfile.TarInfo] = []
            total = 0
            for m in tar:
                if len(members) >= MAX_MEMBERS:
                    raise UpdateRefused(f"archive holds more than {MAX_MEMBERS} entries")
                parts = PurePosixPath(m.name).parts
                if not parts or m.name.startswith(("/", "\\")) or ".." in parts or ":" in parts[0] or "\\" in m.name:
                    raise UpdateRefused(f"unsafe archive entry {m.name!r}: absolute path or '..'")
                if not (m.isfile() or m.isdir()):
                    kind = "link" if (m.issym() or m.islnk()) else "device/fifo/special file"
                    raise UpdateRefused(f"unsafe archive entry {m.name!r}: a {kind} (only files and folders allowed)")
                total += m.size
                if m.size > max_total or total > max_total:
                    raise UpdateRefused(f"archive expands to more than {max_total} bytes "
                                        f"({EXTRACT_FACTOR}x update.max_bytes)")
                members.append(m)
            dest.mkdir(parents=True, exist_ok=False)
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, members=members, filter="data")
            else:  # pragma: no cover - old Pythons: the checks above are the filter
                tar.extractall(dest, members=members)
    except UpdateRefused:
        raise
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise UpdateRefused(f"archive is not a readable tar.gz ({e})") from e
    except OSError as e:
        raise UpdateRefused(f"extracting the archive failed ({e})") from e


# -- smoke test -------------------------------------------------------------------------------
def smoke_test(classifier: Any, frames: Sequence[np.ndarray] = ()) -> int:
    """Run the classifier on ``frames`` and a dark and a light blank frame; raise
    :class:`UpdateRefused` unless every output is finite, has one score per label and (softmax)
    sums to about 1. Returns the number of inputs tried."""
    n = len(classifier.labels)
    ref = frames[-1] if len(frames) else np.zeros((480, 640, 3), np.uint8)
    inputs = list(frames)[-3:] + [np.zeros_like(ref), np.full_like(ref, 255)]
    out = classifier.manifest.output
    tol = 0.05 + (n * out.quantization.scale if out.quantization else 0.0)
    for i, img in enumerate(inputs):
        what = f"smoke test input {i + 1}/{len(inputs)}"
        try:
            classifier.classify(img)
            raw = classify.scores(classifier.interpreter)
        except Exception as e:  # noqa: BLE001 - whatever the interpreter throws, the model is unusable
            raise UpdateRefused(f"{what}: inference failed ({type(e).__name__}: {e})") from e
        if raw.shape != (n,):
            raise UpdateRefused(f"{what}: output shape {tuple(raw.shape)}, expected ({n},) for {n} labels")
        if not np.all(np.isfinite(raw)):
            raise UpdateRefused(f"{what}: outputs are not finite (NaN or inf)")
        if out.activation == "softmax" and abs(float(raw.sum()) - 1.0) > tol:
            raise UpdateRefused(f"{what}: softmax outputs sum to {float(raw.sum()):.3f}, not 1")
    return len(inputs)


# -- the store of received bundles ------------------------------------------------------------
def _ref(manifest: Manifest, update_id: str | None, dir_name: str | None) -> dict:
    return {"name": manifest.name, "version": manifest.version, "sha256": manifest.sha256,
            "update_id": update_id, "dir": dir_name}


def public_ref(ref: dict | None) -> dict | None:
    """What ``model/state`` reports of a model (no local paths)."""
    if ref is None:
        return None
    return {"name": ref["name"], "version": ref["version"], "sha256": ref["sha256"], "update_id": ref.get("update_id")}


def _safe_name(text: str) -> str:
    out = "".join(c if c.isalnum() or c in "._-" else "_" for c in text).strip("._") or "model"
    return out[:64]


_BUNDLE_DIR = re.compile(r"[A-Za-z0-9._-]{1,64}-[0-9a-f]{8,12}")  # ModelStore.install's folder names


def remove_tree(path: Path, what: str) -> bool:
    """Delete the folder ``path`` (``what`` it holds, for the log); True when it is gone. A failure is
    logged with its cause and the path, never reported as done."""
    if not path.exists() and not path.is_symlink():
        return True
    errors: list[str] = []
    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=lambda fn, p, e: errors.append(f"{p}: {e}"))
    else:
        shutil.rmtree(path, onerror=lambda fn, p, info: errors.append(f"{p}: {info[1]}"))
    if errors or path.exists():
        logger.error("could not delete %s %s (%s); it stays on disk", what, path, "; ".join(errors[:3]) or "still there")
        return False
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        remove_tree(path, "a leftover folder")
    else:
        path.unlink(missing_ok=True)


class ModelStore:
    """Received bundles, one folder each under ``root``, and ``active.json``: which one runs
    (``active``), what a rollback returns to (``previous``), the last outcome, and the update
    ids already handled. A ``dir`` of ``None`` means the configured model (``config.model``)."""

    def __init__(self, root: str | Path, keep: int = 3):
        if keep < 2:
            raise ValueError(f"keep must be >= 2 (the active and the previous model); got {keep}")
        self.root = Path(root).expanduser()
        self.keep = keep
        self._lock = threading.Lock()
        self._state_unreadable = False
        self.state = self._read()
        self._clean_up()

    @staticmethod
    def _empty() -> dict:
        return {"format": 1, "base": None, "active": None, "previous": None, "installed": [],
                "last_update": None, "seen": [], "signed_created": None}

    def _read(self) -> dict:
        path = self.root / STATE_FILE
        if not path.is_file():
            return self._empty()
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict) or data.get("format") != 1:
                raise ValueError("unknown format")
            return {**self._empty(), **data}
        except (OSError, ValueError) as e:
            logger.error("%s is unreadable (%s); starting from the configured model", path, e)
            self._state_unreadable = True
            return self._empty()

    def _clean_up(self) -> None:
        """Remove what an interrupted run left behind: staging files, ``.incoming-*`` folders and
        bundle folders that ``active.json`` no longer references (never the active or previous
        one; nothing of the bundles when ``active.json`` could not be read)."""
        if not self.root.is_dir():
            return
        try:
            staging = self.root / STAGING_DIR
            if staging.is_dir() and not staging.is_symlink():
                for p in staging.iterdir():
                    _remove(p)
            keep = set(self.state["installed"]) | {r["dir"] for r in (self.state["active"], self.state["previous"])
                                                   if isinstance(r, dict) and r.get("dir")}
            for p in self.root.iterdir():
                if p.name.startswith(".incoming-"):
                    _remove(p)
                elif (not self._state_unreadable and p.name not in keep and _BUNDLE_DIR.fullmatch(p.name)
                      and p.is_dir() and not p.is_symlink()):
                    logger.info("removing %s: a model folder active.json does not reference", p)
                    _remove(p)
        except Exception as e:  # noqa: BLE001 - a clean-up must never keep the device from starting
            logger.warning("cleaning up the model store %s failed: %s", self.root, e)

    def save(self) -> None:
        with self._lock:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = self.root / f".{STATE_FILE}.tmp"
            tmp.write_text(json.dumps(self.state, indent=2) + "\n")
            os.replace(tmp, self.root / STATE_FILE)

    @property
    def active(self) -> dict | None:
        return self.state["active"]

    @property
    def previous(self) -> dict | None:
        return self.state["previous"]

    def path_of(self, ref: dict, configured: str | Path) -> Path:
        return Path(configured) if ref.get("dir") is None else self.root / ref["dir"]

    def staging(self) -> Path:
        d = self.root / STAGING_DIR
        d.mkdir(parents=True, exist_ok=True)
        return d

    # -- start-up ----------------------------------------------------------------------------
    def startup_model(self, configured: str | Path) -> Path:
        """The bundle to start with: the one an update installed, unless the configured model
        changed since (then the configured one wins and the stored choice is set aside)."""
        configured = Path(configured)
        active, base = self.state["active"], self.state["base"]
        if active is None or active.get("dir") is None:
            return configured
        try:
            configured_sha = load_manifest(configured).sha256
        except BundleError:
            configured_sha = None
        if base is not None and configured_sha is not None and configured_sha != base["sha256"]:
            logger.warning("the configured model %s changed since the last update (sha256 %s... -> %s...): using it; "
                           "the updated model %s %s is set aside", configured, base["sha256"][:12],
                           configured_sha[:12], active["name"], active["version"])
            self.state.update(active=None, previous=None, base=None)
            self.save()
            return configured
        path = self.root / active["dir"]
        logger.info("using the model installed by update %s: %s %s (%s)", active.get("update_id"), active["name"],
                    active["version"], path)
        return path

    def fall_back(self, reason: str) -> None:
        """The stored active model did not load: run the configured one from now on."""
        bad = self.state["active"]
        logger.error("the updated model %s %s failed to load (%s); falling back to the configured model",
                     bad and bad["name"], bad and bad["version"], reason)
        self.state.update(active=None, previous=None)
        self.save()

    # -- changes -----------------------------------------------------------------------------
    def install(self, extracted: Path, manifest: Manifest, update_id: str) -> str:
        """Move an extracted bundle into the store; returns its folder name."""
        name = f"{_safe_name(manifest.version)}-{update_id[:12]}"
        dest = self.root / name
        if dest.exists():
            shutil.rmtree(dest)
        self.root.mkdir(parents=True, exist_ok=True)
        os.replace(extracted, dest)
        return name

    def activate(self, ref: dict, current: dict) -> None:
        """``ref`` is now running; ``current`` (what ran before) becomes the rollback target."""
        if self.state["base"] is None and current.get("dir") is None:
            self.state["base"] = dict(current)
        self.state["previous"], self.state["active"] = current, ref
        if ref.get("dir") and ref["dir"] not in self.state["installed"]:
            self.state["installed"].append(ref["dir"])
        self.prune()

    def swap_back(self) -> None:
        self.state["active"], self.state["previous"] = self.state["previous"], self.state["active"]

    def record(self, update_id: str | None, last_update: dict, remember: bool = True) -> None:
        """Store the last outcome; with ``remember``, also ``update_id`` as handled (duplicates ignored)."""
        self.state["last_update"] = last_update
        if update_id and remember:
            seen = [u for u in self.state["seen"] if u != update_id] + [update_id]
            self.state["seen"] = seen[-SEEN_KEEP:]
        self.save()

    def seen(self, update_id: str) -> bool:
        return update_id in self.state["seen"]

    def prune(self) -> None:
        """Keep at most ``keep`` received bundles; never the active or the previous one. A folder that
        cannot be deleted stays listed (and is tried again at the next prune)."""
        protected = {r["dir"] for r in (self.state["active"], self.state["previous"]) if r and r.get("dir")}
        installed = self.state["installed"]
        excess = len(installed) - self.keep
        for victim in [d for d in installed if d not in protected][:max(0, excess)]:
            if remove_tree(self.root / victim, "the old model"):
                installed.remove(victim)
                logger.info("pruned old model %s", victim)

    def discard(self, dir_name: str) -> None:
        if dir_name not in {r["dir"] for r in (self.state["active"], self.state["previous"]) if r}:
            remove_tree(self.root / dir_name, "the refused model")


# -- the updater ------------------------------------------------------------------------------
class SwapTarget(Protocol):
    """What the updater needs of the pipeline."""

    classifier: Any

    def request_swap(self, classifier: Any) -> Future: ...

    def recent_frames(self) -> list[np.ndarray]: ...


@dataclass
class UpdatePolicy:
    """How a device treats updates (built from ``config.update`` by :mod:`sdk.app`)."""

    public_key: Any = None            # an ed25519 public key: only commands signed with it are applied
    allow_unsigned: bool = False      # without public_key: apply unsigned commands (lab only); else refuse all
    max_bytes: int = DEFAULT_MAX_BYTES
    allow_input_change: bool = False
    fleet: bool = True
    timeout_s: float = 120.0
    swap_timeout_s: float = 30.0
    max_age_s: float = 0.0            # signed commands older than this are refused (0: no age limit)
    clock_skew_s: float = 300.0       # with max_age_s: how far in the future a command's time may be

    @property
    def key_id(self) -> str | None:
        return key_id(self.public_key) if self.public_key is not None else None


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
    (same delegate, preprocessing options); ``target`` is the running pipeline. Use
    :meth:`start` before the publisher connects (so queued messages of a persistent session
    find the subscription) and :meth:`close` at the end.
    """

    def __init__(self, *, topics: Topics, publisher: Any, target: SwapTarget,
                 make_classifier: Callable[[Path], Any], store: ModelStore, configured_model: str | Path,
                 policy: UpdatePolicy | None = None, run_id: str = "",
                 on_model_change: Callable[[Any], None] | None = None):
        self.topics = topics
        self.on_model_change = on_model_change  # called with the new manifest after a swap or rollback
        self.publisher = publisher
        self.target = target
        self.make_classifier = make_classifier
        self.store = store
        self.configured_model = Path(configured_model)
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
        if self.store.active is None:
            self.store.state["active"] = _ref(cur.manifest, None, None)
        elif self.store.active["sha256"] != cur.manifest.sha256:  # should not happen: app loaded the stored one
            logger.warning("active.json names %s but %s is running", self.store.active["version"], cur.manifest.version)
            self.store.state["active"] = _ref(cur.manifest, None, None)
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
                return _peek_update_id(payload)
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
            uid = _peek_update_id(payload)
            if uid and self._pending is not None and self._pending.begin.update_id == uid:
                self._refuse_pending(str(e))
            elif not (uid and self._already_handled(uid)):
                # not remembered as handled: junk must not push real update ids out of that memory
                self._finish(uid, _peek(payload, "version"), "refused", str(e), started, source, remember=False)
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
        and, for signed commands, that it is fresh (see :meth:`_check_fresh`)."""
        self._check_signature(raw)
        expected = self.topics.device if source == "device" else FLEET
        if cmd.to != expected:
            where = f"this device's topic ({self.topics.device})" if source == "device" else "the fleet topic"
            raise UpdateRefused(f"{cmd.kind} addressed to {cmd.to!r} arrived on {where}, which takes only "
                                f"commands for {expected!r}")
        if self.policy.public_key is not None:
            self._check_fresh(cmd)

    def _check_fresh(self, cmd: Begin | Rollback) -> None:
        """Replay protection for signed commands, on their signed ``created`` time: it must be later
        than that of every signed command accepted before (kept in ``active.json``, so it holds
        across restarts and needs no clock on the device), and with ``update.max_age_s`` no older
        than that by the device's clock."""
        created = parse_created(cmd.created)
        mark = self.store.state.get("signed_created")
        if mark is not None and created <= parse_created(mark):
            raise UpdateRefused(f"replayed or out-of-order {cmd.kind}: created {cmd.created} is not later than the "
                                f"last accepted signed command ({mark})")
        if self.policy.max_age_s > 0:
            age = time.time() - created.timestamp()
            if age > self.policy.max_age_s:
                raise UpdateRefused(f"{cmd.kind} created {cmd.created} is {age:.0f} s old, more than "
                                    f"update.max_age_s ({self.policy.max_age_s:g} s)")
            if age < -self.policy.clock_skew_s:
                raise UpdateRefused(f"{cmd.kind} created {cmd.created} is {-age:.0f} s in the future of this device's "
                                    f"clock (more than {self.policy.clock_skew_s:g} s)")
        self.store.state["signed_created"] = cmd.created
        self.store.save()

    def _check_signature(self, raw: dict) -> None:
        if self.policy.public_key is not None:
            verify(raw, self.policy.public_key)
        elif not self.policy.allow_unsigned:
            raise UpdateRefused(f"{raw.get('kind', 'command')} refused: this device has no update.public_key to "
                                "verify updates with (install the fleet's public key from `python -m train.publish "
                                "keygen` and set update.public_key; update.allow_unsigned: true accepts unsigned "
                                "updates, lab only)")
        elif raw.get("signature"):
            logger.warning("update %s is signed but this device has no update.public_key: signature not checked",
                           raw.get("update_id"))

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
            size = p.path.stat().st_size
            if size != a.size:
                raise UpdateRefused(f"archive has {size} bytes, the begin message says {a.size}")
            digest = sha256_file(p.path)
            if digest != a.sha256:
                raise UpdateRefused(f"archive sha256 {digest[:16]}... does not match the begin message's "
                                    f"{a.sha256[:16]}... (a corrupt or altered chunk)")
            if not remove_tree(incoming, "an earlier extraction"):
                raise UpdateRefused(f"cannot clear the extraction folder {incoming.name} (see the device log)")
            safe_extract(p.path, incoming, EXTRACT_FACTOR * self.policy.max_bytes)
            try:
                manifest = load_manifest(incoming)
            except BundleError as e:
                raise UpdateRefused(f"the archive is not a valid bundle: {str(e).replace(str(incoming), '<archive>')}") from e
            self._check_claims(b, manifest)
            self._check_compatible(manifest)
            installed = self.store.install(incoming, manifest, b.update_id)
            classifier = self._load(self.store.root / installed)
            smoke_test(classifier, self.target.recent_frames())
            before = self._current_ref()
            self._swap(classifier)
            ref = _ref(manifest, b.update_id, installed)
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

    @staticmethod
    def _check_claims(b: Begin, m: Manifest) -> None:
        for what, claimed, actual in (("name", b.name, m.name), ("version", b.version, m.version),
                                      ("target", b.target, m.target), ("model sha256", b.manifest_sha256, m.sha256)):
            if claimed != actual:
                raise UpdateRefused(f"the archive's manifest has {what} {actual!r} but the update claims {claimed!r}")

    def _check_compatible(self, m: Manifest) -> None:
        if self.policy.allow_input_change:
            return
        cur = self.target.classifier.manifest.input
        if list(m.input.shape) != list(cur.shape):
            raise UpdateRefused(f"input shape {m.input.shape} differs from the running model's {cur.shape} "
                                "(set update.allow_input_change to accept it)")
        if m.input.colour != cur.colour:
            raise UpdateRefused(f"input colour {m.input.colour!r} differs from the running model's {cur.colour!r} "
                                "(set update.allow_input_change to accept it)")

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

    def _current_ref(self) -> dict:
        active = self.store.active
        cur = self.target.classifier.manifest
        if active is not None and active["sha256"] == cur.sha256:
            return dict(active)
        return _ref(cur, None, None)

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


def _peek(payload: bytes, key: str) -> str | None:
    try:
        v = json.loads(payload).get(key)
    except (ValueError, AttributeError, UnicodeDecodeError):
        return None
    return v if isinstance(v, str) and len(v) <= 200 else None


def _peek_update_id(payload: bytes) -> str | None:
    v = _peek(payload, "update_id")
    return v if v and re.fullmatch(_UPDATE_ID[1:-1], v) else None


__all__ = ["ArchiveInfo", "Begin", "End", "ModelStore", "ModelUpdater", "Rollback", "Signature", "Update",
           "UpdatePolicy", "UpdateRefused", "generate_keypair", "key_id", "load_private_key", "load_public_key",
           "make_rollback", "make_update", "pack_bundle", "parse_command", "safe_extract", "sign", "signed_bytes",
           "smoke_test", "verify"]

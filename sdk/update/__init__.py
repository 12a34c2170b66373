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

The device only verifies signatures (:func:`load_public_key`, :func:`verify`); making keys and
signing are the host's (:mod:`train.loop.keys`), handed to :func:`make_update` /
:func:`make_rollback` as a :data:`Signer`.

Modules: :mod:`.wire` (the messages and their parsing), :mod:`.signing` (ed25519 checks),
:mod:`.commands` (building commands), :mod:`.archive` (packing, checked unpacking),
:mod:`.store` (the on-disk bundle store), :mod:`.checks` (the policy and the checks before an
update is applied), :mod:`.updater` (the state machine).
"""
from __future__ import annotations

from .archive import EXTRACT_FACTOR, MAX_MEMBERS, pack_bundle, safe_extract, unpack_update
from .checks import DEFAULT_MAX_BYTES, UpdatePolicy, smoke_test
from .commands import Update, make_rollback, make_update, new_update_id
from .signing import Signer, key_id, load_public_key, verify
from .store import SEEN_KEEP, STAGING_DIR, STATE_FILE, ModelStore, model_ref, public_ref, remove_tree
from .updater import OUTCOMES, ModelUpdater, SwapTarget
from .wire import (
    DEFAULT_CHUNK_SIZE,
    MAX_CHUNK_SIZE,
    SIGNING_CONTEXT,
    UPDATE_SCHEMA,
    ArchiveInfo,
    Begin,
    Command,
    End,
    Rollback,
    Signature,
    UpdateRefused,
    encode,
    model_update_schema,
    parse_command,
    parse_created,
    signed_bytes,
    validation_errors,
)

__all__ = [
    "DEFAULT_CHUNK_SIZE", "DEFAULT_MAX_BYTES", "EXTRACT_FACTOR", "MAX_CHUNK_SIZE", "MAX_MEMBERS", "OUTCOMES", "SEEN_KEEP",
    "SIGNING_CONTEXT", "STAGING_DIR", "STATE_FILE", "UPDATE_SCHEMA",
    "ArchiveInfo", "Begin", "Command", "End", "ModelStore", "ModelUpdater", "Rollback", "Signature", "Signer",
    "SwapTarget", "Update", "UpdatePolicy", "UpdateRefused",
    "encode", "key_id", "load_public_key", "make_rollback", "make_update", "model_ref", "model_update_schema",
    "new_update_id", "pack_bundle", "parse_command", "parse_created", "public_ref", "remove_tree", "safe_extract",
    "signed_bytes", "smoke_test", "unpack_update", "validation_errors", "verify",
]

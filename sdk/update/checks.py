"""How a device treats updates (:class:`UpdatePolicy`, from ``config.update``) and the checks it
makes before one is applied: who signed and addressed the command, that it is fresh, that the
archive's manifest is what was claimed and fits the running model, and a smoke test of the new
model. Each check raises :class:`~sdk.update.wire.UpdateRefused` with the reason."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .. import classify
from ..bundle import Manifest
from ..topics import FLEET
from .signing import key_id, verify
from .wire import Begin, Rollback, UpdateRefused, parse_created

logger = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 64 * 1024 * 1024


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


def check_signature(raw: dict, policy: UpdatePolicy) -> None:
    """The signature ``policy`` requires (or, lab only, the unsigned command it allows)."""
    if policy.public_key is not None:
        verify(raw, policy.public_key)
    elif not policy.allow_unsigned:
        raise UpdateRefused(f"{raw.get('kind', 'command')} refused: this device has no update.public_key to "
                            "verify updates with (install the fleet's public key from `python -m train.publish "
                            "keygen` and set update.public_key; update.allow_unsigned: true accepts unsigned "
                            "updates, lab only)")
    elif raw.get("signature"):
        logger.warning("update %s is signed but this device has no update.public_key: signature not checked",
                       raw.get("update_id"))


def check_addressed(cmd: Begin | Rollback, source: str, device: str) -> None:
    """That ``cmd`` is for the topic it came on (``source``: ``device`` or ``fleet``)."""
    expected = device if source == "device" else FLEET
    if cmd.to != expected:
        where = f"this device's topic ({device})" if source == "device" else "the fleet topic"
        raise UpdateRefused(f"{cmd.kind} addressed to {cmd.to!r} arrived on {where}, which takes only "
                            f"commands for {expected!r}")


def check_fresh(cmd: Begin | Rollback, policy: UpdatePolicy, last_signed: str | None) -> None:
    """Replay protection for signed commands, on their signed ``created`` time: it must be later
    than ``last_signed``, that of every signed command accepted before (kept in ``active.json``, so
    it holds across restarts and needs no clock on the device), and with ``update.max_age_s`` no
    older than that by the device's clock."""
    created = parse_created(cmd.created)
    if last_signed is not None and created <= parse_created(last_signed):
        raise UpdateRefused(f"replayed or out-of-order {cmd.kind}: created {cmd.created} is not later than the "
                            f"last accepted signed command ({last_signed})")
    if policy.max_age_s > 0:
        age = time.time() - created.timestamp()
        if age > policy.max_age_s:
            raise UpdateRefused(f"{cmd.kind} created {cmd.created} is {age:.0f} s old, more than "
                                f"update.max_age_s ({policy.max_age_s:g} s)")
        if age < -policy.clock_skew_s:
            raise UpdateRefused(f"{cmd.kind} created {cmd.created} is {-age:.0f} s in the future of this device's "
                                f"clock (more than {policy.clock_skew_s:g} s)")


def check_claims(b: Begin, m: Manifest) -> None:
    """That the archive's manifest is the one the begin message claimed."""
    for what, claimed, actual in (("name", b.name, m.name), ("version", b.version, m.version),
                                  ("target", b.target, m.target), ("model sha256", b.manifest_sha256, m.sha256)):
        if claimed != actual:
            raise UpdateRefused(f"the archive's manifest has {what} {actual!r} but the update claims {claimed!r}")


def check_compatible(m: Manifest, running: Manifest, policy: UpdatePolicy) -> None:
    """That the new model takes the running one's input (unless ``update.allow_input_change``)."""
    if policy.allow_input_change:
        return
    cur = running.input
    if list(m.input.shape) != list(cur.shape):
        raise UpdateRefused(f"input shape {m.input.shape} differs from the running model's {cur.shape} "
                            "(set update.allow_input_change to accept it)")
    if m.input.colour != cur.colour:
        raise UpdateRefused(f"input colour {m.input.colour!r} differs from the running model's {cur.colour!r} "
                            "(set update.allow_input_change to accept it)")


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

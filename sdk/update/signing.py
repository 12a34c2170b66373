"""ed25519 checks of model updates on the device: load the fleet's public key, verify a command.

The device only verifies: making keys and signing are the host's (:mod:`train.loop.keys`), and
the private key never reaches the device.
"""
from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any, Callable

from .wire import UpdateRefused, signed_bytes

Signer = Callable[[dict], dict]
"""Returns a command with its ``signature`` over :func:`signed_bytes` (host side: :func:`train.loop.keys.signer`)."""


def cryptography_modules() -> tuple[Any, Any]:
    """``(serialization, ed25519)`` of the ``cryptography`` package, or an ImportError naming the extra."""
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("signed model updates need the 'cryptography' package: pip install 'edgeclf[device]'") from e
    return serialization, ed25519


def key_id(public_key: Any) -> str:
    """First 16 hex digits of the sha256 of the raw 32-byte ed25519 public key."""
    serialization, _ = cryptography_modules()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_public_key(path: str | Path) -> Any:
    """An ed25519 public key from a PEM file or a file holding the raw 32-byte key in base64."""
    serialization, ed25519 = cryptography_modules()
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

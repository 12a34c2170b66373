"""The fleet's ed25519 keys, on the host: make a pair, load the private key, sign update commands.

The private key stays here; devices get only the public key and verify (:mod:`sdk.update.signing`).
A signature is over :func:`sdk.update.signed_bytes` of the command; :func:`signer` hands signing to
:func:`sdk.update.make_update` and :func:`sdk.update.make_rollback`.
"""
from __future__ import annotations

import base64
import os
from functools import partial
from pathlib import Path
from typing import Any

from sdk.update import Signer, key_id, signed_bytes
from sdk.update.signing import cryptography_modules

SIGN_KEY_PASSWORD_ENV = "EDGECLF_SIGN_KEY_PASSWORD"

__all__ = ["SIGN_KEY_PASSWORD_ENV", "generate_keypair", "load_private_key", "sign", "signer"]


def load_private_key(path: str | Path) -> Any:
    """An ed25519 private key from a PEM file (password, if any, from $EDGECLF_SIGN_KEY_PASSWORD)
    or a file holding the raw 32-byte seed in base64."""
    serialization, ed25519 = cryptography_modules()
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
    serialization, ed25519 = cryptography_modules()
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



def signer(private_key: Any) -> Signer:
    """``private_key`` as the ``signer`` of :func:`sdk.update.make_update` / :func:`sdk.update.make_rollback`."""
    return partial(sign, private_key=private_key)

"""Team Ed25519 signing keys (``cryptography``): the private half is stored
Fernet-encrypted (``deployments.crypto``), the public half goes to devices.

A bundle's signature is Ed25519 over the raw 32-byte SHA-256 digest of its
file. Rotation makes a new current key that signs every live bundle again;
the old key stays valid (devices keep it and accept its signatures) until it
is retired."""
from __future__ import annotations

import base64
import secrets

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

RAW = {"encoding": serialization.Encoding.Raw, "format": serialization.PublicFormat.Raw}


def new_key_material() -> tuple[str, str, str]:
    """(key_id, public_key b64, private_key b64) for a fresh key pair."""
    private = Ed25519PrivateKey.generate()
    private_raw = private.private_bytes(serialization.Encoding.Raw,
                                        serialization.PrivateFormat.Raw,
                                        serialization.NoEncryption())
    public_raw = private.public_key().public_bytes(**RAW)
    return (f"k_{secrets.token_hex(6)}", base64.b64encode(public_raw).decode(),
            base64.b64encode(private_raw).decode())


def sign_digest(private_key_b64: str, digest_hex: str) -> str:
    key = Ed25519PrivateKey.from_private_bytes(base64.b64decode(private_key_b64))
    return base64.b64encode(key.sign(bytes.fromhex(digest_hex))).decode()


def parse_public_key(value: object) -> str | None:
    """A device's public key as given (base64 of 32 raw bytes), normalised, or None."""
    if not isinstance(value, str):
        return None
    try:
        raw = base64.b64decode(value.strip(), validate=True)
        Ed25519PublicKey.from_public_bytes(raw)
    except (ValueError, TypeError):
        return None
    return base64.b64encode(raw).decode()

"""Bundles: verify before anything else reads them, then unpack.

A bundle is a ``tar.gz`` with ``manifest.json`` at its root (``entry``: the
command, ``env``, ``resources``). Hangar signs the raw 32-byte SHA-256 digest of
the file with the team's Ed25519 key. ``verify`` checks, in this order, the
size, the digest against the one Hangar named, that there is a signature, that
its key is one the device learned from Hangar, and the signature itself; any
failure raises ``Refused`` with the reason that goes into the status report.
Only a verified file is opened by ``unpack`` (``tarfile``'s ``data`` filter:
no absolute paths, no ``..``, no links out, no devices)."""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import shlex
import shutil
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

MANIFEST = "manifest.json"


class Refused(Exception):
    """This bundle will not run; ``str(exc)`` says why."""


@dataclass(frozen=True)
class Manifest:
    entry: list[str]
    env: dict[str, str] = field(default_factory=dict)
    resources: dict = field(default_factory=dict)
    raw: dict = field(default_factory=dict)


def hex_digest(digest: str) -> str:
    """``sha256:<hex>`` or ``<hex>`` → the 64 lowercase hex digits."""
    value = (digest or "").strip().lower()
    if value.startswith("sha256:"):
        value = value[7:]
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise Refused(f"not a sha256 digest: {digest!r}")
    return value


def file_sha256(path: Path) -> bytes:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1024 * 1024):
            h.update(chunk)
    return h.digest()


def verify(path: Path, *, digest: str, signature: str | None, key_id: str | None,
           team_keys: dict[str, str], size: int | None = None) -> None:
    """Raise ``Refused`` unless ``path`` is the bundle Hangar signed."""
    expected = bytes.fromhex(hex_digest(digest))
    if size is not None and path.stat().st_size != size:
        raise Refused(f"tampered: {path.stat().st_size} bytes, Hangar announced {size}")
    actual = file_sha256(path)
    if not hmac.compare_digest(actual, expected):
        raise Refused(f"tampered: the file's sha256 is {actual.hex()}, "
                      f"Hangar signed {expected.hex()}")
    if not signature:
        raise Refused("unsigned: the bundle carries no signature")
    public = team_keys.get(key_id or "")
    if public is None:
        raise Refused(f"wrongly signed: key {key_id!r} is not one of the team's keys")
    try:
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public))
        key.verify(base64.b64decode(signature, validate=True), expected)
    except (InvalidSignature, ValueError, binascii.Error):
        raise Refused(f"wrongly signed: the signature does not verify with key {key_id!r}"
                      ) from None


def _parse_manifest(data) -> Manifest:
    if not isinstance(data, dict):
        raise Refused(f"{MANIFEST} must be a JSON object")
    entry = data.get("entry", data.get("command"))
    if isinstance(entry, str):
        entry = shlex.split(entry)
    if not entry or not isinstance(entry, list) or not all(isinstance(a, str) for a in entry):
        raise Refused(f"{MANIFEST} has no entry command")
    env = data.get("env") or {}
    if not isinstance(env, dict):
        raise Refused(f"{MANIFEST}: env must be an object")
    resources = data.get("resources") or {}
    if not isinstance(resources, dict):
        raise Refused(f"{MANIFEST}: resources must be an object")
    return Manifest(entry=entry, env={str(k): str(v) for k, v in env.items()},
                    resources=resources, raw=data)


def unpack(path: Path, dest: Path) -> Manifest:
    """Unpack a verified bundle into ``dest`` (replaced) and read its manifest."""
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with tarfile.open(path, "r:gz") as archive:
            archive.extractall(tmp, filter="data")
        manifest_path = tmp / MANIFEST
        if not manifest_path.is_file():
            raise Refused(f"the bundle has no {MANIFEST}")
        try:
            manifest = _parse_manifest(json.loads(manifest_path.read_text()))
        except ValueError as exc:
            raise Refused(f"{MANIFEST} is not JSON: {exc}") from None
    except (tarfile.TarError, OSError, EOFError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise Refused(f"the bundle cannot be unpacked: {exc}") from None
    except Refused:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return manifest


def command(manifest: Manifest) -> list[str]:
    """The entry command; ``python``/``python3`` mean the agent's own interpreter,
    so a bundle's Python program runs wherever the agent runs."""
    argv = list(manifest.entry)
    if argv[0] in ("python", "python3"):
        argv[0] = sys.executable
    return argv

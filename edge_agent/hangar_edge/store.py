"""The data directory: everything the agent knows survives a restart here.

    identity.json      device id, device token, server URL (mode 0600)
    device_key.pem     the device's Ed25519 private key (PKCS#8, mode 0600)
    state.json         last desired state and its ETag, team keys, what runs,
                       refused bundles
    buffer.sqlite3     spans and run records not yet uploaded
    bundles/           verified bundles (<sha256>.tar.gz) and their unpacked trees
    logs/              the program's output, one file per version
    work/              the program's own persistent directory ($HANGAR_EDGE_WORK_DIR)

Files are replaced atomically (write, fsync, rename): a crash leaves the old
version or the new one, never half of either. Secrets are protected the way
SSH keys are: files only the agent's user can read."""
from __future__ import annotations

import base64
import json
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


def write_atomic(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


class Store:
    def __init__(self, data_dir: str | Path):
        self.root = Path(data_dir).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        for sub in ("bundles", "logs", "work"):
            (self.root / sub).mkdir(exist_ok=True)

    @property
    def buffer_path(self) -> Path:
        return self.root / "buffer.sqlite3"

    @property
    def bundles(self) -> Path:
        return self.root / "bundles"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def work(self) -> Path:
        return self.root / "work"

    def _read(self, name: str) -> dict | None:
        path = self.root / name
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None

    def _write(self, name: str, data: dict, *, mode: int = 0o644) -> None:
        write_atomic(self.root / name, json.dumps(data, indent=2, sort_keys=True).encode(),
                     mode=mode)

    # Identity -------------------------------------------------------------------------------

    def identity(self) -> dict | None:
        return self._read("identity.json")

    def save_identity(self, identity: dict) -> None:
        self._write("identity.json", identity, mode=0o600)

    def device_key(self) -> Ed25519PrivateKey:
        """The device's key pair, generated on first use."""
        path = self.root / "device_key.pem"
        if path.exists():
            return serialization.load_pem_private_key(path.read_bytes(), password=None)
        key = Ed25519PrivateKey.generate()
        write_atomic(path, key.private_bytes(serialization.Encoding.PEM,
                                             serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()), mode=0o600)
        return key

    def public_key_b64(self) -> str:
        raw = self.device_key().public_key().public_bytes(serialization.Encoding.Raw,
                                                          serialization.PublicFormat.Raw)
        return base64.b64encode(raw).decode()

    # State ----------------------------------------------------------------------------------

    def state(self) -> dict:
        return self._read("state.json") or {}

    def save_state(self, state: dict) -> None:
        self._write("state.json", state)

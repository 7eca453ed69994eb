"""Helpers for the edge server tests: a device key pair, bundles as tar.gz
bytes, enrolling through the API, and verifying what Hangar signed."""
from __future__ import annotations

import base64
import io
import json
import tarfile
from datetime import timedelta

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from django.test import Client
from django.utils import timezone

from deployments.audit import Actor
from edge import actions


def device_public_key() -> str:
    raw = Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def tarball(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def bundle_bytes(tag: str = "v1", manifest: dict | None = None) -> bytes:
    manifest = manifest or {"entry": ["python3", "main.py"], "env": {"TAG": tag},
                            "resources": {"cpu": 0.1}}
    return tarball({"main.py": f"print({tag!r})\n".encode(),
                    "manifest.json": json.dumps(manifest).encode()})


def enrolment_token(group, user, *, uses: int = 5, expires_in=timedelta(hours=1)) -> str:
    _, secret = actions.create_enrolment_token(
        group, max_uses=uses, expires_at=timezone.now() + expires_in, actor=Actor(user=user))
    return secret


def enrol(token: str, name: str = "dev", client: Client | None = None, **extra) -> dict:
    client = client or Client()
    response = client.post("/api/v1/edge/enrol", data=json.dumps(
        {"token": token, "public_key": device_public_key(), "name": name, **extra}),
        content_type="application/json")
    assert response.status_code == 201, response.content
    return response.json()


def device_client(device_token: str) -> Client:
    return Client(headers={"Authorization": f"Device {device_token}"})


def verify_signature(team_keys: list[dict], key_id: str, signature: str, digest: str) -> None:
    """Raise unless ``signature`` is the named team key's Ed25519 over the digest."""
    public = {k["key_id"]: k["public_key"] for k in team_keys}[key_id]
    Ed25519PublicKey.from_public_bytes(base64.b64decode(public)).verify(
        base64.b64decode(signature), bytes.fromhex(digest.removeprefix("sha256:")))

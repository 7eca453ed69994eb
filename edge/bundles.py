"""Bundles on disk, content-addressed: ``<HANGAR_EDGE_BUNDLE_DIR>/<sha256>.tar.gz``.

An upload is streamed to a temporary file while it is hashed and counted
(over ``HANGAR_EDGE_MAX_BUNDLE_BYTES`` → ``TooLarge``, 413), then its
``manifest.json`` is read and validated (``BadBundle`` naming the field, 422)
before the file is moved to its digest's name; the same content twice is one
file."""
from __future__ import annotations

import hashlib
import json
import os
import shlex
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from deployments.errors import DomainError, Invalid

MANIFEST = "manifest.json"
CHUNK = 1024 * 1024


class TooLarge(DomainError):
    status = 413
    default_detail = "The bundle is larger than the limit."


class BadBundle(Invalid):
    pass


@dataclass(frozen=True)
class Stored:
    digest: str
    size: int
    manifest: dict
    path: Path


def bundle_dir() -> Path:
    path = Path(settings.HANGAR_EDGE_BUNDLE_DIR)
    path.mkdir(parents=True, exist_ok=True)
    return path


def path_for(digest: str) -> Path:
    return bundle_dir() / f"{digest}.tar.gz"


def max_bytes() -> int:
    return settings.HANGAR_EDGE_MAX_BUNDLE_BYTES


def too_large() -> TooLarge:
    return TooLarge({"bundle": [f"A bundle may be at most {max_bytes()} bytes."]})


def store(chunks) -> Stored:
    """Hash, count and keep an upload given as an iterable of bytes."""
    limit = max_bytes()
    digest = hashlib.sha256()
    size = 0
    fd, tmp_name = tempfile.mkstemp(dir=bundle_dir(), prefix=".upload-")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise too_large()
                digest.update(chunk)
                out.write(chunk)
        if size == 0:
            raise BadBundle({"bundle": ["The upload is empty: send a tar.gz."]})
        manifest = read_manifest(tmp)
        hex_digest = digest.hexdigest()
        tmp.replace(path_for(hex_digest))
    finally:
        tmp.unlink(missing_ok=True)
    return Stored(digest=hex_digest, size=size, manifest=manifest, path=path_for(hex_digest))


def read_manifest(path: Path) -> dict:
    try:
        with tarfile.open(path, "r:gz") as archive:
            try:
                member = archive.getmember(MANIFEST)
            except KeyError:
                try:
                    member = archive.getmember(f"./{MANIFEST}")
                except KeyError:
                    raise BadBundle({"manifest": [
                        f"The bundle has no {MANIFEST} at its root."]}) from None
            handle = archive.extractfile(member)
            if handle is None:
                raise BadBundle({"manifest": [f"{MANIFEST} is not a file."]})
            data = handle.read(256 * 1024)
    except (tarfile.TarError, OSError, EOFError):
        raise BadBundle({"bundle": ["The upload is not a tar.gz archive."]}) from None
    try:
        manifest = json.loads(data)
    except ValueError:
        raise BadBundle({"manifest": [f"{MANIFEST} is not JSON."]}) from None
    return validate_manifest(manifest)


def validate_manifest(manifest: object) -> dict:
    if not isinstance(manifest, dict):
        raise BadBundle({"manifest": [f"{MANIFEST} must be a JSON object."]})
    errors: dict[str, list[str]] = {}
    entry = manifest.get("entry", manifest.get("command"))
    if isinstance(entry, str):
        try:
            entry = shlex.split(entry)
        except ValueError:
            entry = None
    if not entry or not isinstance(entry, list) or not all(isinstance(a, str) for a in entry):
        errors["manifest.entry"] = ["Give the entry command: a list of strings."]
    env = manifest.get("env", {})
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        errors["manifest.env"] = ["env must be an object of strings."]
    resources = manifest.get("resources", {})
    if not isinstance(resources, dict):
        errors["manifest.resources"] = ["resources must be an object."]
    if errors:
        raise BadBundle(errors)
    return manifest

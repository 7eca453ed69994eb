"""From Hangar's desired state to what runs: fetch the bundle, verify it
(before it is unpacked), unpack it, and describe the process to supervise.

Verified bundles stay in ``bundles/`` (the one that runs, the previous one and
the one Hangar names as previous), so a rollback or a restart of the agent
while offline needs no download; each is verified again before it is used."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

from . import bundles
from .bundles import Refused
from .client import Client
from .store import Store
from .supervisor import Target

log = logging.getLogger("hangar_edge.desired")
DOWNLOAD_SLACK = 0  # the announced size is exact; a byte more is a different bundle
DEFAULT_MAX_BUNDLE = 512 * 1024 * 1024


def bundle_path(store: Store, digest: str) -> Path:
    return store.bundles / f"{bundles.hex_digest(digest)}.tar.gz"


def download(store: Store, client: Client, bundle: dict) -> Path:
    """The bundle's file, fetched unless already here. May raise
    ``client.Offline``/``ServerError`` (try again later) or ``Refused``."""
    digest = bundles.hex_digest(bundle.get("digest", ""))
    path = bundle_path(store, digest)
    if path.exists():
        return path
    url = bundle.get("url") or f"api/v1/edge/bundles/sha256:{digest}"
    size = bundle.get("size")
    limit = int(size) + DOWNLOAD_SLACK if isinstance(size, int) else DEFAULT_MAX_BUNDLE
    tmp = path.with_name(path.name + ".part")
    try:
        with tmp.open("wb") as sink:
            client.request("GET", url, ok=(200,), sink=sink, max_bytes=limit,
                           headers={"Accept": "application/gzip"})
    except Exception:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)
    return path


def verify(path: Path, bundle: dict, team_keys: dict[str, str]) -> None:
    size = bundle.get("size")
    bundles.verify(path, digest=bundle.get("digest", ""), signature=bundle.get("signature"),
                   key_id=bundle.get("key_id"), team_keys=team_keys,
                   size=size if isinstance(size, int) else None)


def prepare(store: Store, path: Path, bundle: dict, team_keys: dict[str, str],
            env: dict[str, str]) -> Target:
    """Verify ``path`` (again), unpack it and describe its process."""
    try:
        verify(path, bundle, team_keys)
    except Refused:
        path.unlink(missing_ok=True)  # never keep a file that failed: the next try downloads
        raise
    digest = bundles.hex_digest(bundle["digest"])
    tree = store.bundles / digest
    manifest = bundles.unpack(path, tree)
    version = str(bundle.get("version") or digest[:12])
    child_env = {**manifest.env, **env, "HANGAR_EDGE_BUNDLE_VERSION": version,
                 "HANGAR_EDGE_BUNDLE_DIGEST": f"sha256:{digest}",
                 "HANGAR_EDGE_WORK_DIR": str(store.work)}
    return Target(digest=digest, version=version, argv=bundles.command(manifest), cwd=tree,
                  env=child_env)


def prune(store: Store, keep: set[str]) -> None:
    """Remove cached bundles other than ``keep`` (hex digests)."""
    for entry in store.bundles.iterdir():
        name = entry.name.split(".", 1)[0]
        if name in keep:
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)

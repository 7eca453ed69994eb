"""Who is sending: an ingest token (``<deployment id>.<secret>``, or an older
bare secret) proves a deployment. Deployments are cached for 30 s (unknown ids
for 5 s), so a steady stream of exports costs no query."""
from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cachetools import TTLCache

from deployments.models import Deployment, Instance

from .replies import Unauthorized, UnknownDeployment

SOURCE_TTL_S = 30.0
MISSING_TTL_S = 5.0  # how long an unknown deployment id is answered 404 from memory


@dataclass
class Source:
    """What an ingest token proves: the deployment (and its team and agent)."""

    deployment_id: int
    team_id: int
    agent_id: int
    version_id: int
    token_digest: bytes | None
    versions: dict[str, int | None] = field(default_factory=dict)
    # Set when the sender's identity names the instance (an edge device): its
    # spans carry this instance whatever their resource says.
    instance: str | None = None

    def version_for(self, instance: str) -> int:
        """The version the named instance runs (falls back to the deployment's);
        instances are read with the source, so this never queries."""
        return self.versions.get(instance) or self.version_id


# Entries expire by themselves; reads reorder a TTLCache, so both go under the lock.
_sources: TTLCache[int, Source] = TTLCache(maxsize=100_000, ttl=SOURCE_TTL_S)
_missing: TTLCache[int, bool] = TTLCache(maxsize=100_000, ttl=MISSING_TTL_S)  # no such id
_legacy: dict[bytes, int] = {}
_legacy_loaded = [0.0]
_auth_lock = threading.Lock()


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _load(deployment_id: int) -> Source | None:
    with _auth_lock:
        cached = _sources.get(deployment_id)
    if cached is not None:
        return cached
    row = (Deployment.objects.filter(pk=deployment_id).select_related("agent")
           .only("pk", "version_id", "ingest_token", "agent__team_id", "agent_id").first())
    source = None
    if row is None:
        with _auth_lock:
            _missing[deployment_id] = True
    else:
        versions = dict(Instance.objects.filter(deployment_id=row.pk, version__isnull=False)
                        .values_list("name", "version_id")[:1000])
        source = Source(deployment_id=row.pk, team_id=row.agent.team_id, agent_id=row.agent_id,
                        version_id=row.version_id, versions=versions,
                        token_digest=_digest(row.ingest_token) if row.ingest_token else None)
        with _auth_lock:
            _sources[deployment_id] = source
    return source


def _legacy_lookup(token: str) -> int | None:
    """Tokens issued before the ``<id>.<secret>`` format: a digest map, rebuilt
    at most once a minute (never a scan per request)."""
    now = time.monotonic()
    if now - _legacy_loaded[0] > 60:
        mapping = {}
        for pk, value in Deployment.objects.exclude(ingest_token="").values_list(
                "pk", "ingest_token"):
            if not _TOKEN_FORMAT.match(value or ""):
                mapping[_digest(value)] = pk
        with _auth_lock:
            _legacy.clear()
            _legacy.update(mapping)
            _legacy_loaded[0] = now
    return _legacy.get(_digest(token))


_TOKEN_FORMAT = re.compile(r"^(\d{1,18})\.(.+)$")

# Other credentials than the ingest token, by Authorization scheme (lowercase):
# ``resolver(token) -> Source`` or raise ``Unauthorized``. The edge app registers
# "device" (a device's token proves its group's edge deployment).
_schemes: dict[str, Callable[[str], Source]] = {}


def register_scheme(scheme: str, resolver: Callable[[str], Source]) -> None:
    _schemes[scheme.lower()] = resolver


def cached_source(authorization: str) -> Source | None:
    """``authenticate`` from the cache alone: the source, an error, or None when
    the database must be asked (which ``authenticate`` does)."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    token = token.strip()
    match = _TOKEN_FORMAT.match(token)
    if scheme.lower() != "bearer" or not match:
        return None
    deployment_id = int(match.group(1))
    with _auth_lock:
        missing = deployment_id in _missing
        source = _sources.get(deployment_id)
    if missing:
        raise UnknownDeployment(f"no deployment {deployment_id}")
    if source is None:
        return None
    if source.token_digest is None or not secrets.compare_digest(source.token_digest,
                                                                 _digest(token)):
        raise Unauthorized("wrong ingest token for this deployment")
    return source


def authenticate(authorization: str) -> Source:
    scheme, _, token = (authorization or "").strip().partition(" ")
    token = token.strip()
    resolver = _schemes.get(scheme.lower())
    if resolver is not None and token:
        return resolver(token)
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("send the deployment's ingest token as 'Authorization: Bearer <token>'")
    match = _TOKEN_FORMAT.match(token)
    if match:
        source = _load(int(match.group(1)))
        if source is None:
            raise UnknownDeployment(f"no deployment {match.group(1)}")
    else:
        deployment_id = _legacy_lookup(token)
        if deployment_id is None:
            raise Unauthorized("unknown ingest token")
        source = _load(deployment_id)
        if source is None:
            raise UnknownDeployment("the token's deployment no longer exists")
    if source.token_digest is None or not secrets.compare_digest(source.token_digest,
                                                                 _digest(token)):
        raise Unauthorized("wrong ingest token for this deployment")
    return source


def forget_sources() -> None:
    """Drop cached deployments (tests; tokens otherwise refresh within 30 s)."""
    with _auth_lock:
        _sources.clear()
        _missing.clear()
        _legacy.clear()
        _legacy_loaded[0] = 0.0

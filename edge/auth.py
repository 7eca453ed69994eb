"""Device identity: ``Authorization: Device <token>``.

The token is minted at enrolment (``hgd_<secret>``) and only its SHA-256 is
stored; a Django request is one indexed lookup by that hash. A revoked device
is answered 401 with the reason, every call. Unchanged polls and telemetry
exports ask ``devicecache`` (memory kept true by PostgreSQL's announcements)
instead.

Last seen is coalesced: a request only notes the time in this process's
memory, and one UPDATE for every device noted is written at most every
``HANGAR_EDGE_LAST_SEEN_FLUSH_S`` (a timer thread), so a poll writes nothing.
"""
from __future__ import annotations

import hashlib
import logging
import threading
from datetime import datetime

from cachetools import TTLCache
from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.utils import timezone
from ninja.security import APIKeyHeader

from deployments.errors import DomainError
from telemetry.ingest import Source
from telemetry.ingest import Unauthorized as IngestUnauthorized

from . import devicecache
from .models import Device, DeviceGroup, DeviceState

log = logging.getLogger("edge.auth")
DEVICE_TOKEN_PREFIX = "hgd_"


class DeviceUnauthorized(DomainError):
    status = 401
    default_detail = "Send the device token as 'Authorization: Device <token>'."


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def device_for_token(authorization: str) -> Device:
    scheme, _, token = (authorization or "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "device" or not token:
        raise DeviceUnauthorized()
    device = (Device.objects.select_related("group")
              .filter(token_hash=hash_secret(token)).first())
    if device is None:
        raise DeviceUnauthorized("Unknown device token.")
    if device.state == DeviceState.REVOKED:
        raise DeviceUnauthorized("This device is revoked.")
    seen(device.pk)
    return device


class DeviceAuth(APIKeyHeader):
    """Ninja auth for the device routes: ``request.auth`` is the Device."""

    param_name = "Authorization"
    openapi_scheme = "apiKey"

    def __call__(self, request):
        return device_for_token(request.headers.get("Authorization", ""))

    def authenticate(self, request, key):  # pragma: no cover - __call__ does it all
        return device_for_token(key or "")


# Last seen, coalesced ---------------------------------------------------------------------

_pending: dict[int, datetime] = {}
_lock = threading.Lock()
_timer: list[threading.Timer | None] = [None]


def seen(device_id: int) -> None:
    with _lock:
        _pending[device_id] = timezone.now()
        if _timer[0] is None:
            timer = threading.Timer(settings.HANGAR_EDGE_LAST_SEEN_FLUSH_S, _flush_in_thread)
            timer.daemon = True
            _timer[0] = timer
            timer.start()


def forget_last_seen() -> None:
    """Drop what is noted and not written yet, and its timer (tests)."""
    with _lock:
        _pending.clear()
        if _timer[0] is not None:
            _timer[0].cancel()
            _timer[0] = None


def _flush_in_thread() -> None:
    try:
        flush_last_seen()
    finally:
        connection.close()


def flush_last_seen() -> int:
    """Write every noted last-seen in one UPDATE; the number of devices written."""
    with _lock:
        batch = dict(_pending)
        _pending.clear()
        _timer[0] = None
    if not batch:
        return 0
    ids = list(batch)
    times = [batch[i] for i in ids]
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                "UPDATE edge_device AS d SET last_seen = v.seen FROM "
                "unnest(%s::bigint[], %s::timestamptz[]) AS v(id, seen) "
                "WHERE d.id = v.id AND (d.last_seen IS NULL OR d.last_seen < v.seen)",
                [ids, times])
    except DatabaseError as exc:
        log.warning("last seen not written (%s); kept for the next flush", exc)
        with _lock:
            for pk, at in batch.items():
                _pending.setdefault(pk, at)
        return 0
    return len(ids)


# Telemetry from devices -------------------------------------------------------------------

# The deployment half of a device's source, per token, for a few seconds; whether
# the device may send at all is asked of ``devicecache`` on every export.
_sources: TTLCache[str, Source] = TTLCache(maxsize=100_000, ttl=5.0)
_sources_lock = threading.Lock()


def telemetry_source(token: str) -> Source:
    """What ``/v1/traces`` attributes a device's spans to: its group's edge
    deployment, the instance named after the device (never what the device claims).
    A revoked device is refused from the moment its revocation commits."""
    token_hash = hash_secret(token)
    known = devicecache.lookup(token_hash)
    if known is None:
        raise IngestUnauthorized("Unknown device token.")
    if known.state == DeviceState.REVOKED:
        raise IngestUnauthorized("This device is revoked.")
    seen(known.device_id)
    with _sources_lock:
        cached = _sources.get(token_hash)
    if cached is not None:
        return cached
    row = (DeviceGroup.objects.filter(pk=known.group_id, deployment__isnull=False)
           .values_list("deployment_id", "deployment__agent_id", "deployment__version_id")
           .first())
    if row is None:
        raise IngestUnauthorized("the device's group serves no edge deployment")
    deployment_id, agent_id, version_id = row
    source = Source(deployment_id=deployment_id, team_id=known.team_id, agent_id=agent_id,
                    version_id=version_id, token_digest=None,
                    instance=instance_name(known.device_id))
    with _sources_lock:
        _sources[token_hash] = source
    return source


def instance_name(device_id: int) -> str:
    return f"device-{device_id}"


def forget_sources() -> None:
    with _sources_lock:
        _sources.clear()

"""Graceful drain: an instance about to be removed stops getting new requests,
and its in-flight ones finish (up to ``HANGAR_DRAIN_TIMEOUT_S``) first.

The reconciler calls :func:`before_remove` before it stops instances. Serving
instances of a deployment the gateway serves are marked out of service (health
``Progressing``, reason ``draining``), which the gateway's next table read (at
once, on the ``instances`` event) drops from its choices; then this waits until
no gateway process reports a request in flight on them. Gateways report their
per-replica counts to Redis every second (``gw:inflight:<deployment>:<process>``,
expiring after 3 s; ``gateway.figures``) — when none reports on the deployment,
no gateway serves it and there is nothing to wait for. Without Redis there is
no report to wait on either: instances are removed at once, as before.
"""
from __future__ import annotations

import os
import time

import redis
from django.conf import settings

from .events import Instances, publish
from .models import Health, Instance

DRAIN_TIMEOUT_S = float(os.environ.get("HANGAR_DRAIN_TIMEOUT_S", "30"))
# A gateway reports once a second: wait this long for a report made after the mark.
REPORT_GRACE_S = 1.5


def _reports(client, deployment_id: int) -> list[dict[str, int]]:
    found = []
    for key in client.scan_iter(match=f"gw:inflight:{deployment_id}:*", count=100):
        found.append({k.decode(): int(v) for k, v in client.hgetall(key).items()})
    return found


def gateway_inflight(deployment_id: int) -> dict[str, int] | None:
    """In-flight requests per replica summed over the live gateway processes
    (None: no gateway reports on this deployment, or no Redis)."""
    if not settings.REDIS_URL:
        return None
    try:
        with redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2) as client:
            found = _reports(client, deployment_id)
    except redis.RedisError:
        return None
    if not found:
        return None
    totals: dict[str, int] = {}
    for report in found:
        for name, count in report.items():
            totals[name] = totals.get(name, 0) + count
    return totals


def before_remove(deployment, rows: list[Instance], *, sleep=time.sleep) -> None:
    """Take ``rows`` out of the gateway's choices and wait for their in-flight
    requests (at most ``DRAIN_TIMEOUT_S``)."""
    serving = [r for r in rows if r.pk is not None and r.health == Health.HEALTHY]
    if not serving or not settings.REDIS_URL:
        return
    client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2)
    try:
        with client:
            if not _reports(client, deployment.pk):
                return  # no gateway serves it
            names = {r.name for r in serving}
            Instance.objects.filter(pk__in=[r.pk for r in serving]).update(
                health=Health.PROGRESSING, health_reason="draining")
            for r in serving:
                r.health, r.health_reason = Health.PROGRESSING, "draining"
            publish(deployment.agent.team_id, Instances(), deployment_id=deployment.pk)
            sleep(REPORT_GRACE_S)
            deadline = time.monotonic() + DRAIN_TIMEOUT_S
            while time.monotonic() < deadline:
                busy = sum(report.get(name, 0) for report in _reports(client, deployment.pk)
                           for name in names)
                if busy == 0:
                    return
                sleep(0.2)
    except redis.RedisError:
        return  # no way to know: remove as before

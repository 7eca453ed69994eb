"""What the deployment page shows of the gateway: request rate, latency
p50/p95 and error rate over the last minutes (read from the gateway's spans,
which every proxied request writes), and in-flight requests per replica (each
gateway process writes its counts to Redis every second; they expire when it
stops)."""
from __future__ import annotations

import os
import statistics
from datetime import timedelta

import redis
from django.conf import settings
from django.utils import timezone

from telemetry.models import Span, datetime_to_ns

WINDOW = timedelta(minutes=5)
INFLIGHT_TTL_S = 3
PROCESS = f"{os.uname().nodename}-{os.getpid()}"


def inflight_key(deployment_id: int, process: str = PROCESS) -> str:
    """One hash per deployment and gateway process: replica → in-flight requests."""
    return f"gw:inflight:{deployment_id}:{process}"


def traffic(deployment_id: int) -> dict:
    """Requests per minute, latency p50/p95 (ms) and error share over ``WINDOW``."""
    since = datetime_to_ns(timezone.now() - WINDOW)
    rows = list(Span.objects.filter(deployment_id=deployment_id, start_ns__gte=since,
                                    name__startswith="gateway ")
                .values_list("duration_ns", "status_code"))
    if not rows:
        return {"requests": 0, "per_min": 0.0, "p50_ms": None, "p95_ms": None,
                "error_rate": None, "window_min": int(WINDOW.total_seconds() // 60)}
    durations = sorted(d / 1e6 for d, _ in rows)
    if len(durations) > 1:
        cuts = statistics.quantiles(durations, n=100, method="inclusive")
        p50, p95 = cuts[49], cuts[94]
    else:
        p50 = p95 = durations[0]
    errors = sum(1 for _, status in rows if status == 2)
    minutes = WINDOW.total_seconds() / 60
    return {"requests": len(rows), "per_min": len(rows) / minutes, "p50_ms": p50,
            "p95_ms": p95, "error_rate": errors / len(rows),
            "window_min": int(minutes)}


def client() -> redis.Redis | None:
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2) \
        if settings.REDIS_URL else None


def inflight(deployment_id: int) -> dict[str, int] | None:
    """In-flight requests per replica summed over live gateway processes (None: no Redis)."""
    found = client()
    if found is None:
        return None
    try:
        with found:
            totals: dict[str, int] = {}
            for key in found.scan_iter(match=inflight_key(deployment_id, "*"), count=100):
                for replica, value in found.hgetall(key).items():
                    totals[replica.decode()] = totals.get(replica.decode(), 0) + int(value)
            return totals
    except redis.RedisError:
        return None


def cold_starts(deployment_id: int) -> dict | None:
    """Recorded cold starts (arrival at zero → first byte): count, p50, p95 in ms."""
    found = client()
    if found is None:
        return None
    try:
        with found:
            values = sorted(float(v) * 1000 for v in
                            found.lrange(f"gw:cold:{deployment_id}", 0, -1))
    except redis.RedisError:
        return None
    if not values:
        return {"count": 0, "p50_ms": None, "p95_ms": None}
    if len(values) == 1:
        return {"count": 1, "p50_ms": values[0], "p95_ms": values[0]}
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {"count": len(values), "p50_ms": cuts[49], "p95_ms": cuts[94]}

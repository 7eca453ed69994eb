"""In-flight requests per replica: what the gateway counts (each gateway
process reports its per-replica counts every second) and what the agent
reports on /healthz, whichever is higher — the gateway's count is fresh, the
agent's also sees callers that bypass the gateway."""
from __future__ import annotations

from typing import ClassVar

from cachetools import TTLCache

from ..drain import gateway_inflight
from .base import Signal

# One read of the gateways' reports per deployment and second, not one per replica.
_reports: TTLCache = TTLCache(maxsize=10_000, ttl=1.0)


class InflightSignal(Signal):
    name: ClassVar[str] = "inflight"

    def value(self, row, deployment) -> float | None:
        if deployment.pk not in _reports:
            _reports[deployment.pk] = gateway_inflight(deployment.pk)
        counts = _reports[deployment.pk]
        if counts is None:
            return row.inflight
        return max(float(counts.get(row.name, 0)), row.inflight or 0.0)

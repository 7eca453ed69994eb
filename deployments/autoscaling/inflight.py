"""In-flight requests per replica, as the agent reports them on /healthz."""
from __future__ import annotations

from typing import ClassVar

from .base import Signal


class InflightSignal(Signal):
    name: ClassVar[str] = "inflight"

    def value(self, row, deployment) -> float | None:
        return row.inflight

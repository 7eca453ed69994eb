"""Real-time: replicas behind the gateway (``gateway/``), kept up as a service."""
from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from .base import GatewayOptions, PatternSettings
from .service import ServicePattern


class RealtimeSettings(PatternSettings):
    concurrency: int | None = Field(None, ge=1, le=10_000,
                                    description="requests in flight per replica")
    request_timeout_s: float | None = Field(None, gt=0, le=24 * 3600)
    scale_to_zero_after_s: int | None = Field(
        None, ge=1, le=7 * 24 * 3600,
        description="opt-in: idle this long (seconds) → 0 replicas; a request wakes it")
    cold_start_wait_s: float | None = Field(
        None, gt=0, le=3600, description="how long a request at zero waits for a replica")
    double_texting: Literal["reject", "enqueue", "interrupt", "rollback"] | None = None


class RealtimePattern(ServicePattern):
    name: ClassVar[str] = "realtime"
    settings_schema: ClassVar[type[PatternSettings]] = RealtimeSettings
    panels: ClassVar[tuple[str, ...]] = ("gateway",)

    def gateway(self, version) -> GatewayOptions:
        found = self.settings(version)
        return GatewayOptions(request_timeout_s=found.request_timeout_s or 15 * 60,
                              concurrency=found.concurrency,
                              scale_to_zero_after_s=found.scale_to_zero_after_s,
                              cold_start_wait_s=found.cold_start_wait_s or 120)

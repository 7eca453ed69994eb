"""Real-time: replicas behind the gateway. For now it runs as a service."""
from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from .base import PatternSettings
from .service import ServicePattern


class RealtimeSettings(PatternSettings):
    concurrency: int | None = Field(None, ge=1, le=10_000,
                                    description="requests in flight per replica")
    request_timeout_s: float | None = Field(None, gt=0, le=24 * 3600)
    double_texting: Literal["reject", "enqueue", "interrupt", "rollback"] | None = None


class RealtimePattern(ServicePattern):
    name: ClassVar[str] = "realtime"
    settings_schema: ClassVar[type[PatternSettings]] = RealtimeSettings

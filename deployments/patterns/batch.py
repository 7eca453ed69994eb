"""Batch: scheduled runs to completion. For now it runs as a service; drivers
that run jobs themselves (Kubernetes) get its schedule as a CronJob."""
from __future__ import annotations

from typing import Any, ClassVar, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator

from .base import PatternSettings
from .service import ServicePattern

CRON_MACROS = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}


class BatchSettings(PatternSettings):
    schedule: str | None = Field(None, description='cron, e.g. "*/5 * * * *"')
    timezone: str | None = Field(None, description="IANA name, e.g. Europe/Paris")
    concurrency_policy: Literal["allow", "forbid", "replace"] = "forbid"
    timeout_s: int | None = Field(None, gt=0, le=7 * 24 * 3600)
    retries: int = Field(0, ge=0, le=100)

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if value not in CRON_MACROS and len(value.split()) != 5:
            raise ValueError("a cron schedule has five fields (minute hour day month weekday)")
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value


class BatchPattern(ServicePattern):
    name: ClassVar[str] = "batch"
    settings_schema: ClassVar[type[PatternSettings]] = BatchSettings

    def spec_extras(self, version, *, features) -> dict[str, Any]:
        if not features.supports_jobs:
            return {}
        settings = self.settings(version)
        return {"schedule": settings.schedule, "timezone": settings.timezone,
                "concurrency_policy": settings.concurrency_policy.capitalize(),
                "timeout_s": settings.timeout_s, "retries": settings.retries}

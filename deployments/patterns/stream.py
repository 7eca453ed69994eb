"""Stream: consumers of a stream, scaled on lag. For now it runs as a service."""
from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from .base import PatternSettings
from .service import ServicePattern


class StreamSettings(PatternSettings):
    source: str | None = Field(None, max_length=500, description="the stream to consume")
    consumer_group: str | None = Field(None, max_length=200)
    lag_target: float | None = Field(None, gt=0, description="pending entries per replica")


class StreamPattern(ServicePattern):
    name: ClassVar[str] = "stream"
    settings_schema: ClassVar[type[PatternSettings]] = StreamSettings

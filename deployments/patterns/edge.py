"""Edge: devices pull their desired state. For now it runs as a service (the
edge driver reports no instances until enrolment lands)."""
from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from .base import PatternSettings
from .service import ServicePattern


class EdgeSettings(PatternSettings):
    device_selector: dict[str, str] = Field(default_factory=dict,
                                            description="labels a device must carry")


class EdgePattern(ServicePattern):
    name: ClassVar[str] = "edge"
    settings_schema: ClassVar[type[PatternSettings]] = EdgeSettings

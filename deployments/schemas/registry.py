"""The registry: agents, their versions, and the targets they run on."""
from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from ninja import Field, Schema
from pydantic import ConfigDict, StringConstraints

from .common import (
    Body,
    Changes,
    Cpu,
    DecimalOut,
    Id,
    KindName,
    PatternName,
    Price,
    SecretName,
    Slug,
    integer,
)


class AgentIn(Body):
    team_id: Id
    slug: Slug
    name: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    description: Annotated[str, StringConstraints(max_length=10_000)] = ""
    pattern: PatternName


class AgentPatch(Changes):
    name: Annotated[str, StringConstraints(min_length=1, max_length=100)] = None
    description: Annotated[str, StringConstraints(max_length=10_000)] = None


class AgentOut(Schema):
    id: int
    team_id: int
    slug: str
    name: str
    description: str
    pattern: str
    created_at: datetime
    updated_at: datetime


class VersionIn(Body):
    """What to run: an image, a bundle or a command (at least one)."""

    model_config = ConfigDict(json_schema_extra={"anyOf": [
        {"required": ["image"], "properties": {"image": {"minLength": 1}}},
        {"required": ["bundle"], "properties": {"bundle": {"minLength": 1}}},
        {"required": ["command"], "properties": {"command": {"minItems": 1}}},
    ]})

    image: Annotated[str, StringConstraints(max_length=255)] = ""
    bundle: Annotated[str, StringConstraints(max_length=255)] = ""
    command: list[Annotated[str, StringConstraints(max_length=4096)]] = Field(
        default_factory=list, max_length=256)
    env: dict[str, Annotated[str, StringConstraints(max_length=32_768)]] = Field(
        default_factory=dict)
    secret_refs: list[SecretName] = Field(default_factory=list, max_length=256)
    cpu: Cpu = Decimal("0.5")
    memory_mb: integer(ge=16, le=1024 * 1024) = 256
    port: integer(ge=1, le=65535) | None = None
    health: dict[str, Any] = Field(default_factory=dict)
    model_settings: dict[str, Any] = Field(default_factory=dict)
    pattern_settings: dict[str, Any] = Field(default_factory=dict)


class VersionOut(Schema):
    id: int
    agent_id: int
    number: int
    digest: str
    image: str
    bundle: str
    command: list[str]
    env: dict[str, str]
    secret_refs: list[str]
    cpu: DecimalOut
    memory_mb: int
    port: int | None
    health: dict[str, Any]
    model_settings: dict[str, Any]
    pattern_settings: dict[str, Any]
    created_at: datetime


class TargetIn(Body):
    team_id: Id
    name: Slug
    kind: KindName
    connection: dict[str, Any] = Field(default_factory=dict)
    labels: dict[str, Annotated[str, StringConstraints(max_length=255)]] = Field(
        default_factory=dict)
    price_cpu_hour: Price = Decimal(0)
    price_gib_hour: Price = Decimal(0)


class TargetPatch(Changes):
    name: Slug = None
    connection: dict[str, Any] = None
    labels: dict[str, Annotated[str, StringConstraints(max_length=255)]] = None
    price_cpu_hour: Price = None
    price_gib_hour: Price = None


class TargetOut(Schema):
    id: int
    team_id: int
    name: str
    kind: str
    connection: dict[str, Any]
    labels: dict[str, str]
    price_cpu_hour: DecimalOut
    price_gib_hour: DecimalOut
    status: str
    status_reason: str
    last_probe_at: datetime | None

"""Request and response shapes for the REST API."""
from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from ninja import Field, Schema
from pydantic import StringConstraints

Id = Annotated[int, Field(ge=1, le=2**62)]
Slug = Annotated[str, StringConstraints(min_length=1, max_length=63)]
PatternName = Literal["batch", "stream", "realtime", "edge"]
KindName = Literal["docker", "kubernetes", "local", "edge"]
RoleName = Literal["viewer", "operator", "admin"]
StateName = Literal["active", "paused", "stopped"]
ScopeName = Literal["read", "deploy", "admin"]
Replicas = Annotated[int, Field(ge=0, le=1000)]


class Detail(Schema):
    detail: Any


class TeamIn(Schema):
    name: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    slug: Slug


class TeamPatch(Schema):
    name: Annotated[str, StringConstraints(min_length=1, max_length=100)] | None = None


class TeamOut(Schema):
    id: int
    name: str
    slug: str
    created_at: datetime
    role: str | None = None


class MemberIn(Schema):
    username: Annotated[str, StringConstraints(min_length=1, max_length=150)]
    role: RoleName = "viewer"


class MemberPatch(Schema):
    role: RoleName


class MemberOut(Schema):
    id: int
    team_id: int
    username: str = Field(..., alias="user.username")
    role: str
    created_at: datetime


class AgentIn(Schema):
    team_id: Id
    slug: Slug
    name: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    description: Annotated[str, StringConstraints(max_length=10_000)] = ""
    pattern: PatternName


class AgentPatch(Schema):
    name: Annotated[str, StringConstraints(min_length=1, max_length=100)] | None = None
    description: Annotated[str, StringConstraints(max_length=10_000)] | None = None


class AgentOut(Schema):
    id: int
    team_id: int
    slug: str
    name: str
    description: str
    pattern: str
    created_at: datetime
    updated_at: datetime


class VersionIn(Schema):
    image: Annotated[str, StringConstraints(max_length=255)] = ""
    bundle: Annotated[str, StringConstraints(max_length=255)] = ""
    command: list[Annotated[str, StringConstraints(max_length=4096)]] = Field(
        default_factory=list, max_length=256)
    env: dict[str, Annotated[str, StringConstraints(max_length=32_768)]] = Field(
        default_factory=dict)
    secret_refs: list[str] = Field(default_factory=list, max_length=256)
    cpu: Annotated[Decimal, Field(gt=0, le=256, max_digits=6, decimal_places=3)] = Decimal("0.5")
    memory_mb: Annotated[int, Field(ge=16, le=1024 * 1024)] = 256
    port: Annotated[int, Field(ge=1, le=65535)] | None = None
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
    cpu: Decimal
    memory_mb: int
    port: int | None
    health: dict[str, Any]
    model_settings: dict[str, Any]
    pattern_settings: dict[str, Any]
    created_at: datetime


class TargetIn(Schema):
    team_id: Id
    name: Slug
    kind: KindName
    connection: dict[str, Any] = Field(default_factory=dict)
    labels: dict[str, Annotated[str, StringConstraints(max_length=255)]] = Field(
        default_factory=dict)
    price_cpu_hour: Annotated[Decimal, Field(ge=0, max_digits=10, decimal_places=6)] = Decimal(0)
    price_gib_hour: Annotated[Decimal, Field(ge=0, max_digits=10, decimal_places=6)] = Decimal(0)


class TargetPatch(Schema):
    name: Slug | None = None
    connection: dict[str, Any] | None = None
    labels: dict[str, Annotated[str, StringConstraints(max_length=255)]] | None = None
    price_cpu_hour: Annotated[Decimal, Field(ge=0, max_digits=10, decimal_places=6)] | None = None
    price_gib_hour: Annotated[Decimal, Field(ge=0, max_digits=10, decimal_places=6)] | None = None


class TargetOut(Schema):
    id: int
    team_id: int
    name: str
    kind: str
    connection: dict[str, Any]
    labels: dict[str, str]
    price_cpu_hour: Decimal
    price_gib_hour: Decimal
    status: str
    status_reason: str
    last_probe_at: datetime | None


class Autoscaling(Schema):
    autoscale_min: Replicas | None = None
    autoscale_max: Replicas | None = None
    autoscale_signal: Literal["", "cpu", "inflight", "lag"] | None = None
    autoscale_target: Annotated[float, Field(gt=0, le=1e9)] | None = None
    rollout_strategy: Literal["rolling", "recreate"] | None = None


class DeploymentIn(Autoscaling):
    agent_id: Id
    target_id: Id
    version_id: Id | None = Field(None, description="defaults to the agent's latest version")
    environment: Slug = "production"
    replicas: Replicas = 1
    state: StateName = "active"


class DeploymentPatch(Autoscaling):
    replicas: Replicas | None = None
    state: StateName | None = None
    version_id: Id | None = None


class DeploymentOut(Schema):
    id: int
    team_id: int = Field(..., alias="agent.team_id")
    agent_id: int
    version_id: int
    version_number: int = Field(..., alias="version.number")
    target_id: int
    environment: str
    replicas: int
    state: str
    autoscale_min: int | None
    autoscale_max: int | None
    autoscale_signal: str
    autoscale_target: float | None
    rollout_strategy: str
    generation: int
    observed_generation: int
    health: str
    health_reason: str
    created_at: datetime
    updated_at: datetime


class InstanceOut(Schema):
    id: int
    name: str
    version_id: int | None
    generation: int
    runtime_id: str
    host: str
    address: str
    phase: str
    health: str
    health_reason: str
    restarts: int
    started_at: datetime | None
    updated_at: datetime


class SecretIn(Schema):
    team_id: Id
    name: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    value: Annotated[str, StringConstraints(max_length=65_536)]


class SecretPatch(Schema):
    value: Annotated[str, StringConstraints(max_length=65_536)]


class SecretOut(Schema):
    id: int
    team_id: int
    name: str
    created_at: datetime
    updated_at: datetime


class TokenIn(Schema):
    team_id: Id
    name: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    scope: ScopeName = "read"
    expires_at: datetime | None = None


class TokenOut(Schema):
    id: int
    team_id: int
    name: str
    prefix: str
    scope: str
    username: str = Field(..., alias="user.username")
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None
    created_at: datetime


class TokenCreated(TokenOut):
    token: str = Field(..., description="shown once; store it now")


class AuditOut(Schema):
    id: int
    at: datetime
    actor_label: str
    team_id: int | None
    action: str
    object_type: str
    object_id: str
    object_repr: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    source: str
    source_ip: str | None


class EventOut(Schema):
    id: int
    at: datetime
    type: str
    reason: str
    message: str
    instance: str


class RollbackIn(Schema):
    version_id: Id | None = Field(None, description="defaults to the previous version")

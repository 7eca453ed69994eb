"""Deployments and what hangs off them: instances, events, revisions, rollback."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from ninja import Field, Schema

from .common import Changes, HistoryLimit, Id, Replicas, Slug, StateName


class Autoscaling(Changes):
    autoscale_min: Replicas | None = None
    autoscale_max: Replicas | None = None
    autoscale_signal: Literal["", "cpu", "inflight", "lag"] = Field(
        None, description='"" turns autoscaling off')
    autoscale_target: Annotated[float, Field(gt=0, le=1e9)] | None = None
    rollout_strategy: Literal["rolling", "recreate"] = None


class DeploymentIn(Autoscaling):
    agent_id: Id
    target_id: Id
    version_id: Id | None = Field(None, description="defaults to the agent's latest version")
    environment: Slug = "production"
    replicas: Replicas = 1
    state: StateName = "active"
    revision_history_limit: HistoryLimit = 10


class DeploymentPatch(Autoscaling):
    replicas: Replicas = None
    state: StateName = None
    version_id: Id = None
    revision_history_limit: HistoryLimit = None


class DeploymentOut(Schema):
    id: int
    team_id: int = Field(..., alias="agent.team_id")
    agent_id: int
    version_id: int
    version_number: int = Field(..., alias="version.number")
    revision: int | None = Field(None, description="number of the revision instances should run")
    revision_history_limit: int
    restarted_at: datetime | None
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

    @staticmethod
    def resolve_revision(obj) -> int | None:
        return obj.revision.number if obj.revision_id else None


class InstanceOut(Schema):
    id: int
    name: str
    version_id: int | None
    revision: int | None = Field(None, description="number of the revision it runs")
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

    @staticmethod
    def resolve_revision(obj) -> int | None:
        return obj.revision.number if obj.revision_id else None



class EventOut(Schema):
    id: int
    at: datetime
    type: str
    reason: str
    message: str
    instance: str


class RollbackIn(Changes):
    model_config = {"extra": "forbid"}

    revision: Id | None = Field(
        None, description="revision number to re-apply; defaults to the newest earlier "
                          "revision that runs something else than the current one")


class RevisionChange(Schema):
    field: str = Field(..., description="dotted path in the spec, e.g. env.LOG_LEVEL")
    change: Literal["added", "removed", "changed"]
    text: str = Field(..., description="the change in words")
    before: Any = None
    after: Any = None


class RevisionOut(Schema):
    number: int
    digest: str
    version_id: int | None = Field(..., description="empty once the version was deleted")
    version_number: int | None
    cause: str
    actor: str
    created_at: datetime
    current: bool
    instances: int = Field(..., description="instances running this revision now")
    previous: int | None = Field(..., description="the revision `changes` compare with")
    changes: list[RevisionChange]
    spec: dict[str, Any] = Field(..., description="the resolved spec; secrets as fingerprints")

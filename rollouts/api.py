"""The rollout REST routes (`/api/v1`): a deployment's strategy, its rollout
(status, promote, promote full, abort, retry, undo), its rollouts, and the
team's hooks with what each notification sent. Viewers read; operators act;
outsiders get 404. No rollout to act on is a 409; a bad step a 422 naming it.
"""
# No `from __future__ import annotations`: ninja reads the handlers' types at import.
from datetime import datetime
from typing import Any, Literal

from django.http import HttpRequest
from ninja import Router, Schema, Status
from ninja.pagination import paginate
from pydantic import Field

from deployments import access
from deployments.api import Page, actor_of
from deployments.models import Deployment, Role
from deployments.schemas import Id
from deployments.schemas.common import Body, integer

from . import actions
from .models import Hook, Measurement, Notification, Rollout, RolloutPolicy

router = Router()
DEPLOYMENTS = Deployment.objects.select_related("agent__team", "revision")


class RolloutStrategyIn(Body):
    strategy: Literal["rolling", "recreate", "canary", "blue_green"]
    steps: list[dict[str, Any]] | None = Field(
        None, description='canary: e.g. [{"set_weight": 10}, {"pause": {"duration_s": 30}}, '
                          '{"analysis": {...}}, {"set_weight": 100}]')
    analysis: dict[str, Any] | None = Field(
        None, description="canary: background analysis; blue_green: pre-promotion analysis")
    auto_promote_s: integer(ge=0, le=86400) | None = None
    scale_down_delay_s: integer(ge=0, le=86400) = 30


class RolloutPolicyOut(Schema):
    strategy: str
    steps: list[dict[str, Any]]
    analysis: dict[str, Any]
    auto_promote_s: int | None
    scale_down_delay_s: int


class MeasurementOut(Schema):
    analysis: str
    at: datetime
    weight: int
    verdict: str
    reason: str
    metrics: list[dict[str, Any]]


class RolloutOut(Schema):
    number: int
    strategy: str
    phase: str
    message: str
    step_index: int
    steps: list[dict[str, Any]]
    weight: int
    stable_revision: int | None
    canary_revision: int | None
    aborted: bool
    started_at: datetime
    finished_at: datetime | None
    promoted_at: datetime | None
    scale_down_at: datetime | None
    preview_url: str | None

    @staticmethod
    def resolve_stable_revision(obj):
        return obj.stable_revision.number if obj.stable_revision_id else None

    @staticmethod
    def resolve_canary_revision(obj):
        return obj.canary_revision.number if obj.canary_revision_id else None

    @staticmethod
    def resolve_preview_url(obj):
        if obj.strategy != "blue_green" or obj.finished_at is not None:
            return None
        d = obj.deployment
        return f"/gw/{d.agent.team.slug}/{d.agent.slug}/{d.environment}/preview/"


class RolloutStatusOut(Schema):
    deployment_id: int
    policy: RolloutPolicyOut | None
    rollout: RolloutOut | None
    measurements: list[MeasurementOut]


class PromoteIn(Body):
    full: bool = False


class UndoIn(Body):
    revision: integer(ge=1, le=2**31) | None = None


class HookIn(Body):
    name: str = Field(..., min_length=1, max_length=100)
    url: str = Field(..., min_length=1, max_length=500)
    format: Literal["generic", "slack"] = "generic"
    events: list[Literal["rollout.started", "rollout.paused", "rollout.promoted",
                         "rollout.aborted", "deployment.health"]] = []


class HookOut(Schema):
    id: int
    team_id: int
    name: str
    url: str
    format: str
    events: list[str]
    created_at: datetime


class NotificationOut(Schema):
    id: int
    event: str
    text: str
    deployment_id: int | None
    payload: dict[str, Any]
    state: str
    attempts: int
    status: str
    at: datetime


def _deployment(request, deployment_id: int, needed: str = Role.VIEWER) -> Deployment:
    return access.get_for(actor_of(request), DEPLOYMENTS.all(), needed, pk=deployment_id)


def status_of(deployment: Deployment) -> dict:
    rollout = (Rollout.objects.select_related("deployment__agent__team", "stable_revision",
                                              "canary_revision")
               .filter(deployment=deployment).order_by("-number").first())
    measurements = list(Measurement.objects.filter(rollout=rollout).order_by("-at")[:50]) \
        if rollout else []
    measurements.reverse()
    return {"deployment_id": deployment.pk,
            "policy": RolloutPolicy.objects.filter(deployment=deployment).first(),
            "rollout": rollout, "measurements": measurements}


@router.get("/deployments/{deployment_id}/rollout", response=RolloutStatusOut,
            tags=["rollouts"])
def get_rollout(request: HttpRequest, deployment_id: Id):
    """The strategy, the latest rollout (null: none yet) and its last measurements."""
    return status_of(_deployment(request, deployment_id))


@router.put("/deployments/{deployment_id}/rollout/strategy", response=RolloutStatusOut,
            tags=["rollouts"])
def set_rollout_strategy(request: HttpRequest, deployment_id: Id, payload: RolloutStrategyIn):
    """Set how new revisions roll out. A bad step is a 422 naming it
    (`steps[2].pause.duration_s`)."""
    d = _deployment(request, deployment_id, Role.OPERATOR)
    actions.set_strategy(d, actor=actor_of(request), strategy=payload.strategy,
                         steps_=payload.steps, analysis=payload.analysis,
                         auto_promote_s=payload.auto_promote_s,
                         scale_down_delay_s=payload.scale_down_delay_s)
    return status_of(d)


@router.post("/deployments/{deployment_id}/rollout/promote", response=RolloutStatusOut,
             tags=["rollouts"])
def promote_rollout(request: HttpRequest, deployment_id: Id, payload: PromoteIn):
    """Canary: to the next step (`full`: to 100 % now); blue-green: switch. 409: no rollout."""
    d = _deployment(request, deployment_id, Role.OPERATOR)
    actions.promote(d, actor=actor_of(request), full=payload.full)
    return status_of(d)


@router.post("/deployments/{deployment_id}/rollout/abort", response=RolloutStatusOut,
             tags=["rollouts"])
def abort_rollout(request: HttpRequest, deployment_id: Id):
    """All traffic back to stable; the deployment Degraded. 409: no rollout under way."""
    d = _deployment(request, deployment_id, Role.OPERATOR)
    actions.abort(d, actor=actor_of(request))
    return status_of(d)


@router.post("/deployments/{deployment_id}/rollout/retry", response=RolloutStatusOut,
             tags=["rollouts"])
def retry_rollout(request: HttpRequest, deployment_id: Id):
    """Start an aborted rollout again from its first step. 409: none aborted."""
    d = _deployment(request, deployment_id, Role.OPERATOR)
    actions.retry(d, actor=actor_of(request))
    return status_of(d)


@router.post("/deployments/{deployment_id}/rollout/undo", response=RolloutStatusOut,
             tags=["rollouts"])
def undo_rollout(request: HttpRequest, deployment_id: Id, payload: UndoIn):
    """Back to revision N (default: the one before), as a new revision."""
    d = _deployment(request, deployment_id, Role.OPERATOR)
    actions.undo(d, actor=actor_of(request), revision=payload.revision)
    return status_of(d)


@router.get("/deployments/{deployment_id}/rollouts", response=list[RolloutOut],
            tags=["rollouts"])
@paginate(Page)
def list_rollouts(request: HttpRequest, deployment_id: Id):
    d = _deployment(request, deployment_id)
    return Rollout.objects.select_related("deployment__agent__team", "stable_revision",
                                          "canary_revision").filter(deployment=d)


@router.get("/teams/{team_id}/rollout-hooks", response=list[HookOut], tags=["rollouts"])
@paginate(Page)
def list_hooks(request: HttpRequest, team_id: Id):
    team = access.get_team_for(actor_of(request), team_id)
    return Hook.objects.filter(team=team)


@router.post("/teams/{team_id}/rollout-hooks", response={201: HookOut}, tags=["rollouts"])
def create_hook(request: HttpRequest, team_id: Id, payload: HookIn):
    """A webhook told about rollout events and health changes (`slack`: a
    Slack-compatible body)."""
    team = access.get_team_for(actor_of(request), team_id, Role.ADMIN)
    hook = actions.create_hook(team, actor=actor_of(request), **payload.dict())
    return Status(201, hook)


@router.delete("/rollout-hooks/{hook_id}", response={204: None}, tags=["rollouts"])
def delete_hook(request: HttpRequest, hook_id: Id):
    hook = access.get_for(actor_of(request), Hook.objects.all(), Role.ADMIN, pk=hook_id)
    actions.delete_hook(hook, actor=actor_of(request))
    return Status(204, None)


@router.get("/rollout-hooks/{hook_id}/notifications", response=list[NotificationOut],
            tags=["rollouts"])
@paginate(Page)
def list_notifications(request: HttpRequest, hook_id: Id):
    """What was sent to the hook, newest first, and how each delivery went."""
    hook = access.get_for(actor_of(request), Hook.objects.all(), pk=hook_id)
    return Notification.objects.filter(hook=hook)

"""Deployments (`/deployments`) and what hangs off one: restart, rollback,
revisions, instances, events and instance logs."""
# No `from __future__ import annotations`: ninja reads the handlers' parameter
# types at import time, and text annotations would leave them undefined.

from ninja import Status
from ninja.pagination import paginate

from .. import access, actions, revisions
from ..errors import Conflict, NotFound, may_raise
from ..logs import log_response
from ..models import Agent, Deployment, Instance, Role, Target
from ..schemas import (
    DeploymentIn,
    DeploymentOut,
    DeploymentPatch,
    EventOut,
    Id,
    InstanceOut,
    LogTail,
    PatternName,
    RevisionOut,
    RollbackIn,
    StateName,
)
from .common import Page, actor_of, router

DEPLOYMENTS = Deployment.objects.select_related("agent", "version", "revision")


@router.get("/deployments", response=list[DeploymentOut], tags=["deployments"])
@paginate(Page)
def list_deployments(request, team: Id | None = None, agent: Id | None = None,
                     state: StateName | None = None, pattern: PatternName | None = None,
                     target: Id | None = None, environment: str | None = None):
    deployments = access.readable(actor_of(request), DEPLOYMENTS.all())
    filters = {"agent__team_id": team, "agent_id": agent, "state": state,
               "agent__pattern": pattern, "target_id": target, "environment": environment}
    return deployments.filter(**{k: v for k, v in filters.items() if v is not None})


@router.post("/deployments", response={201: DeploymentOut}, tags=["deployments"])
def create_deployment(request, payload: DeploymentIn):
    actor = actor_of(request)
    agent = access.get_for(actor, Agent.objects.all(), Role.OPERATOR, pk=payload.agent_id)
    target = access.get_for(actor, Target.objects.filter(team_id=agent.team_id),
                            pk=payload.target_id)
    versions = agent.versions.all()
    if payload.version_id is not None:
        version = versions.filter(pk=payload.version_id).first()
    else:
        version = versions.order_by("-number").first()
    if version is None and payload.version_id is not None:
        raise NotFound("Version not found.")
    if version is None:
        raise Conflict({"version_id": ["The agent has no version yet: add one first."]})
    fields = payload.dict(exclude={"agent_id", "target_id", "version_id"}, exclude_none=True)
    deployment = actions.create_deployment(agent, version=version, target=target, actor=actor,
                                           **fields)
    return Status(201, DEPLOYMENTS.get(pk=deployment.pk))


@router.get("/deployments/{deployment_id}", response=DeploymentOut, tags=["deployments"])
def get_deployment(request, deployment_id: Id):
    return access.get_for(actor_of(request), DEPLOYMENTS.all(), pk=deployment_id)


@router.patch("/deployments/{deployment_id}", response=DeploymentOut, tags=["deployments"])
def update_deployment(request, deployment_id: Id, payload: DeploymentPatch):
    actor = actor_of(request)
    deployment = access.get_for(actor, DEPLOYMENTS.all(), Role.OPERATOR, pk=deployment_id)
    changes = payload.dict(exclude_unset=True)
    if "version_id" in changes:
        version_id = changes.pop("version_id")
        version = deployment.agent.versions.filter(pk=version_id).first()
        if version is None:
            raise NotFound("Version not found.")
        changes["version"] = version
    actions.update_deployment(deployment, actor=actor, **changes)
    return DEPLOYMENTS.get(pk=deployment.pk)


@router.delete("/deployments/{deployment_id}", response={204: None}, tags=["deployments"])
def delete_deployment(request, deployment_id: Id):
    actor = actor_of(request)
    deployment = access.get_for(actor, DEPLOYMENTS.all(), Role.OPERATOR, pk=deployment_id)
    actions.delete_deployment(deployment, actor=actor)
    return Status(204, None)


@router.post("/deployments/{deployment_id}/restart", response=DeploymentOut,
             tags=["deployments"])
def restart_deployment(request, deployment_id: Id):
    """Replace every instance with a fresh one, rolling."""
    actor = actor_of(request)
    deployment = access.get_for(actor, DEPLOYMENTS.all(), Role.OPERATOR, pk=deployment_id)
    actions.restart_deployment(deployment, actor=actor)
    return DEPLOYMENTS.get(pk=deployment.pk)


@router.post("/deployments/{deployment_id}/rollback", response=DeploymentOut,
             tags=["deployments"])
def rollback_deployment(request, deployment_id: Id, payload: RollbackIn):
    """Re-apply revision `revision` (default: the newest earlier revision that
    runs something else) as a new revision. 404 if that revision is not kept,
    409 if it is the current one, runs the same spec, or its version or
    secrets are gone; 422 for a malformed body."""
    actor = actor_of(request)
    deployment = access.get_for(actor, DEPLOYMENTS.all(), Role.OPERATOR, pk=deployment_id)
    actions.rollback_deployment(deployment, revision=payload.revision, actor=actor)
    return DEPLOYMENTS.get(pk=deployment.pk)


@router.get("/deployments/{deployment_id}/revisions", response=list[RevisionOut],
            tags=["deployments"])
@paginate(Page)
def list_revisions(request, deployment_id: Id):
    """The deployment's revisions, newest first, each with what changed from the
    revision before it (`changes`) and how many instances run it."""
    deployment = access.get_for(actor_of(request), Deployment.objects.all(), pk=deployment_id)
    return revisions.history(deployment)


@router.get("/deployments/{deployment_id}/instances", response=list[InstanceOut],
            tags=["deployments"])
@paginate(Page)
def list_instances(request, deployment_id: Id):
    deployment = access.get_for(actor_of(request), Deployment.objects.all(), pk=deployment_id)
    return Instance.objects.filter(deployment=deployment).select_related("revision").order_by(
        "name")


@router.get("/deployments/{deployment_id}/events", response=list[EventOut],
            tags=["deployments"])
@paginate(Page)
def list_events(request, deployment_id: Id):
    """The deployment's timeline, newest first."""
    deployment = access.get_for(actor_of(request), Deployment.objects.all(), pk=deployment_id)
    return deployment.events.all()


@router.get("/deployments/{deployment_id}/instances/{name}/logs", tags=["deployments"])
@may_raise(Conflict)
def instance_logs(request, deployment_id: Id, name: str, tail: LogTail = 200,
                  follow: bool = False):
    """An instance's output: the last `tail` lines, or a Server-Sent Events stream
    of new lines with `follow=true`."""
    deployment = access.get_for(actor_of(request), Deployment.objects.all(), pk=deployment_id)
    instance = Instance.objects.filter(deployment=deployment, name=name).select_related(
        "target").first()
    if instance is None:
        raise NotFound("Instance not found.")
    return log_response(instance, tail=tail, follow=follow, request=request)

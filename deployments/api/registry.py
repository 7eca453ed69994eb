"""The registry: agents and their versions (`/agents`), and targets (`/targets`)."""
# No `from __future__ import annotations`: ninja reads the handlers' parameter
# types at import time, and text annotations would leave them undefined.

from django.db.models import QuerySet
from ninja import Status
from ninja.pagination import paginate

from .. import access, actions
from ..models import Agent, AgentVersion, Role, Target
from ..runtimes import connection_public_view
from ..schemas import (
    AgentIn,
    AgentOut,
    AgentPatch,
    Id,
    KindName,
    PatternName,
    TargetIn,
    TargetOut,
    TargetPatch,
    VersionIn,
    VersionOut,
)
from .common import Page, actor_of, router


@router.get("/agents", response=list[AgentOut], tags=["agents"])
@paginate(Page)
def list_agents(request, team: Id | None = None, pattern: PatternName | None = None,
                q: str | None = None):
    agents: QuerySet = access.readable(actor_of(request), Agent.objects.all())
    if team is not None:
        agents = agents.filter(team_id=team)
    if pattern:
        agents = agents.filter(pattern=pattern)
    if q:
        agents = agents.filter(slug__icontains=q[:63])
    return agents


@router.post("/agents", response={201: AgentOut}, tags=["agents"])
def create_agent(request, payload: AgentIn):
    actor = actor_of(request)
    team = access.get_team_for(actor, payload.team_id, Role.OPERATOR)
    data = payload.dict(exclude={"team_id"})
    return Status(201, actions.create_agent(team, actor=actor, **data))


@router.get("/agents/{agent_id}", response=AgentOut, tags=["agents"])
def get_agent(request, agent_id: Id):
    return access.get_for(actor_of(request), Agent.objects.all(), pk=agent_id)


@router.patch("/agents/{agent_id}", response=AgentOut, tags=["agents"])
def update_agent(request, agent_id: Id, payload: AgentPatch):
    actor = actor_of(request)
    agent = access.get_for(actor, Agent.objects.all(), Role.OPERATOR, pk=agent_id)
    return actions.update_agent(agent, actor=actor, **payload.dict(exclude_unset=True))


@router.delete("/agents/{agent_id}", response={204: None}, tags=["agents"])
def delete_agent(request, agent_id: Id):
    actor = actor_of(request)
    agent = access.get_for(actor, Agent.objects.all(), Role.OPERATOR, pk=agent_id)
    actions.delete_agent(agent, actor=actor)
    return Status(204, None)


@router.get("/agents/{agent_id}/versions", response=list[VersionOut], tags=["agents"])
@paginate(Page)
def list_versions(request, agent_id: Id):
    agent = access.get_for(actor_of(request), Agent.objects.all(), pk=agent_id)
    return agent.versions.all()


@router.post("/agents/{agent_id}/versions", response={201: VersionOut}, tags=["agents"])
def create_version(request, agent_id: Id, payload: VersionIn):
    actor = actor_of(request)
    agent = access.get_for(actor, Agent.objects.all(), Role.OPERATOR, pk=agent_id)
    return Status(201, actions.create_version(agent, actor=actor, **payload.dict()))


@router.get("/agents/{agent_id}/versions/{number}", response=VersionOut, tags=["agents"])
def get_version(request, agent_id: Id, number: Id):
    return access.get_for(actor_of(request), AgentVersion.objects.filter(agent_id=agent_id),
                          number=number)


@router.delete("/agents/{agent_id}/versions/{number}", response={204: None}, tags=["agents"])
def delete_version(request, agent_id: Id, number: Id):
    actor = actor_of(request)
    version = access.get_for(actor, AgentVersion.objects.filter(agent_id=agent_id),
                             Role.OPERATOR, number=number)
    actions.delete_version(version, actor=actor)
    return Status(204, None)


# Targets ------------------------------------------------------------------------


def _target_out(target: Target) -> dict:
    data = {f: getattr(target, f) for f in TargetOut.model_fields if f != "connection"}
    data["connection"] = connection_public_view(target.kind, target.connection)
    return data


@router.get("/targets", response=list[TargetOut], tags=["targets"])
@paginate(Page)
def list_targets(request, team: Id | None = None, kind: KindName | None = None):
    targets = access.readable(actor_of(request), Target.objects.all())
    if team is not None:
        targets = targets.filter(team_id=team)
    if kind:
        targets = targets.filter(kind=kind)
    return [_target_out(t) for t in targets]


@router.post("/targets", response={201: TargetOut}, tags=["targets"])
def create_target(request, payload: TargetIn):
    actor = actor_of(request)
    team = access.get_team_for(actor, payload.team_id, Role.ADMIN)
    target = actions.create_target(team, actor=actor, **payload.dict(exclude={"team_id"}))
    return Status(201, _target_out(target))


@router.get("/targets/{target_id}", response=TargetOut, tags=["targets"])
def get_target(request, target_id: Id):
    return _target_out(access.get_for(actor_of(request), Target.objects.all(), pk=target_id))


@router.patch("/targets/{target_id}", response=TargetOut, tags=["targets"])
def update_target(request, target_id: Id, payload: TargetPatch):
    actor = actor_of(request)
    target = access.get_for(actor, Target.objects.all(), Role.ADMIN, pk=target_id)
    target = actions.update_target(target, actor=actor, **payload.dict(exclude_unset=True))
    return _target_out(target)


@router.delete("/targets/{target_id}", response={204: None}, tags=["targets"])
def delete_target(request, target_id: Id):
    actor = actor_of(request)
    target = access.get_for(actor, Target.objects.all(), Role.ADMIN, pk=target_id)
    actions.delete_target(target, actor=actor)
    return Status(204, None)

"""The REST API router (`/api/v1`): registry, deployments, secrets, tokens.

Every handler resolves the caller into an ``Actor`` (bearer token or session),
fetches through ``access`` (outsiders 404, low roles 403) and changes state
only through ``actions``.
"""
from typing import Annotated

from django.db.models import QuerySet
from django.http import HttpRequest
from ninja import Field, Query, Router, Schema, Status
from ninja.pagination import LimitOffsetPagination, paginate

from . import access, actions, revisions
from .audit import Actor
from .errors import Conflict, Forbidden, NotFound, may_raise
from .logs import log_response
from .models import (
    Agent,
    AgentVersion,
    ApiToken,
    AuditEvent,
    Deployment,
    Instance,
    Membership,
    Role,
    Secret,
    Target,
    Team,
)
from .runtimes import connection_public_view
from .schemas import (
    AgentIn,
    AgentOut,
    AgentPatch,
    AuditOut,
    DeploymentIn,
    DeploymentOut,
    DeploymentPatch,
    EventOut,
    Id,
    InstanceOut,
    KindName,
    LogTail,
    MemberIn,
    MemberOut,
    MemberPatch,
    PatternName,
    RevisionOut,
    RollbackIn,
    SecretIn,
    SecretOut,
    SecretPatch,
    StateName,
    TargetIn,
    TargetOut,
    TargetPatch,
    TeamIn,
    TeamOut,
    TeamPatch,
    TokenCreated,
    TokenIn,
    TokenOut,
    VersionIn,
    VersionOut,
)

# Authentication is configured once, on the NinjaAPI (controlplane/auth.py).
router = Router()


def actor_of(request: HttpRequest) -> Actor:
    return request.auth


class Page(LimitOffsetPagination):
    """Every list: ``limit`` (1–500) items from ``offset``, and the ``count``
    of all that match."""

    class Input(Schema):
        limit: Annotated[int, Field(ge=1, le=500)] = 50
        offset: Annotated[int, Field(ge=0, le=2**62)] = 0

    def paginate_queryset(self, queryset, pagination: Input, **params):
        offset, limit = pagination.offset, pagination.limit
        return {"items": queryset[offset: offset + limit], "count": self._items_count(queryset)}


# Teams ----------------------------------------------------------------------------


@router.get("/teams", response=list[TeamOut], tags=["teams"])
@paginate(Page)
def list_teams(request):
    actor = actor_of(request)
    roles = access.team_roles(actor)
    teams = access.readable(actor, Team.objects.all())
    return [_team_out(t, roles) for t in teams]


def _team_out(team: Team, roles) -> dict:
    role = Role.ADMIN if roles is None else roles.get(team.pk)
    return {"id": team.pk, "name": team.name, "slug": team.slug,
            "created_at": team.created_at, "role": role}


@router.post("/teams", response={201: TeamOut}, tags=["teams"])
def create_team(request, payload: TeamIn):
    actor = actor_of(request)
    if actor.token is not None:
        raise Forbidden("Teams are created by a person, not a token.")
    team = actions.create_team(name=payload.name, slug=payload.slug, actor=actor)
    return Status(201, _team_out(team, access.team_roles(actor)))


@router.get("/teams/{team_id}", response=TeamOut, tags=["teams"])
def get_team(request, team_id: Id):
    actor = actor_of(request)
    return _team_out(access.get_team_for(actor, team_id), access.team_roles(actor))


@router.patch("/teams/{team_id}", response=TeamOut, tags=["teams"])
def update_team(request, team_id: Id, payload: TeamPatch):
    actor = actor_of(request)
    team = access.get_team_for(actor, team_id, Role.ADMIN)
    team = actions.update_team(team, actor=actor, **payload.dict(exclude_unset=True))
    return _team_out(team, access.team_roles(actor))


@router.delete("/teams/{team_id}", response={204: None}, tags=["teams"])
def delete_team(request, team_id: Id):
    actor = actor_of(request)
    actions.delete_team(access.get_team_for(actor, team_id, Role.ADMIN), actor=actor)
    return Status(204, None)


@router.get("/teams/{team_id}/members", response=list[MemberOut], tags=["teams"])
@paginate(Page)
def list_members(request, team_id: Id):
    team = access.get_team_for(actor_of(request), team_id)
    return team.memberships.select_related("user").order_by("created_at", "id")


@router.post("/teams/{team_id}/members", response={201: MemberOut}, tags=["teams"])
def add_member(request, team_id: Id, payload: MemberIn):
    actor = actor_of(request)
    team = access.get_team_for(actor, team_id, Role.ADMIN)
    membership = actions.add_member(team, username=payload.username, role=payload.role,
                                    actor=actor)
    return Status(201, membership)


@router.patch("/teams/{team_id}/members/{member_id}", response=MemberOut, tags=["teams"])
def change_member(request, team_id: Id, member_id: Id, payload: MemberPatch):
    actor = actor_of(request)
    membership = access.get_for(actor, Membership.objects.filter(team_id=team_id)
                                .select_related("user"), Role.ADMIN, pk=member_id)
    return actions.change_member_role(membership, role=payload.role, actor=actor)


@router.delete("/teams/{team_id}/members/{member_id}", response={204: None}, tags=["teams"])
def remove_member(request, team_id: Id, member_id: Id):
    actor = actor_of(request)
    membership = access.get_for(actor, Membership.objects.filter(team_id=team_id),
                                Role.ADMIN, pk=member_id)
    actions.remove_member(membership, actor=actor)
    return Status(204, None)


# Agents and versions -------------------------------------------------------------


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


# Deployments --------------------------------------------------------------------

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


# Secrets ------------------------------------------------------------------------


@router.get("/secrets", response=list[SecretOut], tags=["secrets"])
@paginate(Page)
def list_secrets(request, team: Id | None = None):
    secrets = access.readable(actor_of(request), Secret.objects.all())
    return secrets.filter(team_id=team) if team is not None else secrets


@router.post("/secrets", response={201: SecretOut}, tags=["secrets"])
def create_secret(request, payload: SecretIn):
    actor = actor_of(request)
    team = access.get_team_for(actor, payload.team_id, Role.ADMIN)
    secret = actions.create_secret(team, name=payload.name, value=payload.value, actor=actor)
    return Status(201, secret)


@router.get("/secrets/{secret_id}", response=SecretOut, tags=["secrets"])
def get_secret(request, secret_id: Id):
    return access.get_for(actor_of(request), Secret.objects.all(), pk=secret_id)


@router.patch("/secrets/{secret_id}", response=SecretOut, tags=["secrets"])
def update_secret(request, secret_id: Id, payload: SecretPatch):
    actor = actor_of(request)
    secret = access.get_for(actor, Secret.objects.all(), Role.ADMIN, pk=secret_id)
    return actions.update_secret(secret, value=payload.value, actor=actor)


@router.delete("/secrets/{secret_id}", response={204: None}, tags=["secrets"])
def delete_secret(request, secret_id: Id):
    actor = actor_of(request)
    secret = access.get_for(actor, Secret.objects.all(), Role.ADMIN, pk=secret_id)
    actions.delete_secret(secret, actor=actor)
    return Status(204, None)


# Tokens -------------------------------------------------------------------------


@router.get("/tokens", response=list[TokenOut], tags=["tokens"])
@paginate(Page)
def list_tokens(request, team: Id | None = None):
    tokens = access.readable(actor_of(request), ApiToken.objects.select_related("user"))
    return tokens.filter(team_id=team) if team is not None else tokens


@router.post("/tokens", response={201: TokenCreated}, tags=["tokens"])
def create_token(request, payload: TokenIn):
    """Create a token. The `token` field of the answer is the only time it is shown."""
    actor = actor_of(request)
    team = access.get_team_for(actor, payload.team_id, Role.ADMIN)
    token, plaintext = actions.create_token(team, name=payload.name, scope=payload.scope,
                                            expires_at=payload.expires_at, actor=actor)
    token.token = plaintext  # shown in this answer only
    return Status(201, token)


@router.get("/tokens/{token_id}", response=TokenOut, tags=["tokens"])
def get_token(request, token_id: Id):
    return access.get_for(actor_of(request), ApiToken.objects.select_related("user"), pk=token_id)


@router.delete("/tokens/{token_id}", response=TokenOut, tags=["tokens"])
def revoke_token(request, token_id: Id):
    """Revoke a token (it stays listed, with `revoked_at`, for the audit trail)."""
    actor = actor_of(request)
    token = access.get_for(actor, ApiToken.objects.select_related("user"), Role.ADMIN,
                           pk=token_id)
    return actions.revoke_token(token, actor=actor)


# Audit --------------------------------------------------------------------------


class AuditFilter(Schema):
    team: Id | None = None
    action: str | None = None
    object_type: str | None = None


@router.get("/audit", response=list[AuditOut], tags=["audit"])
@paginate(Page)
def list_audit(request, filters: Query[AuditFilter]):
    """Audit events of the teams where the caller is an admin."""
    actor = actor_of(request)
    roles = access.team_roles(actor)
    events = AuditEvent.objects.all()
    if roles is not None:
        events = events.filter(team_id__in=[t for t, r in roles.items() if r == Role.ADMIN])
    if filters.team is not None:
        events = events.filter(team_id=filters.team)
    if filters.action:
        events = events.filter(action=filters.action)
    if filters.object_type:
        events = events.filter(object_type=filters.object_type)
    return events

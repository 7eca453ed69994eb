"""Teams and their members: `/teams`, `/teams/{id}/members`."""
# No `from __future__ import annotations`: ninja reads the handlers' parameter
# types at import time, and text annotations would leave them undefined.

from ninja import Status
from ninja.pagination import paginate

from .. import access, actions
from ..errors import Forbidden
from ..models import Membership, Role, Team
from ..schemas import Id, MemberIn, MemberOut, MemberPatch, TeamIn, TeamOut, TeamPatch
from .common import Page, actor_of, router


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

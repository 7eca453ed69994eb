"""Gateway keys over the API (``/api/v1/gateway-keys``): list and read them
(any member of the team), create one — its secret is in that answer only — and
revoke one (operators and admins). Writes go through ``gateway.actions``, which
audit them; the key stays listed after revocation, with ``revoked_at``."""
# No `from __future__ import annotations`: ninja reads the handlers' parameter
# types at import time.

from datetime import timedelta

from django.utils import timezone
from ninja import Status
from ninja.pagination import paginate

from deployments import access
from deployments.api.common import AppRouter, Page, actor_of
from deployments.errors import NotFound, may_raise
from deployments.models import Agent, Role
from deployments.schemas import Id

from . import actions
from .models import GatewayKey
from .schemas import GatewayKeyCreated, GatewayKeyIn, GatewayKeyOut

router = AppRouter(tags=["gateway keys"])


@router.get("/gateway-keys", response=list[GatewayKeyOut])
@paginate(Page)
def list_gateway_keys(request, team: Id | None = None):
    """Every gateway key of the teams you read (revoked and expired ones too)."""
    keys = access.readable(actor_of(request), GatewayKey.objects.all())
    return keys.filter(team_id=team) if team is not None else keys


@router.post("/gateway-keys", response={201: GatewayKeyCreated})
@may_raise(NotFound)
def create_gateway_key(request, payload: GatewayKeyIn):
    """A key for callers of the team's real-time agents through the gateway
    (``Authorization: Bearer hgk_…``). The `key` field of the answer is the only
    time it is shown. An agent named that the team does not have is a 404, like
    any unknown id in a body."""
    actor = actor_of(request)
    team = access.get_team_for(actor, payload.team_id, Role.OPERATOR)
    known = set(Agent.objects.filter(team=team, slug__in=payload.agents)
                .values_list("slug", flat=True))
    if missing := sorted(set(payload.agents) - known):
        raise NotFound(f"No agent {', '.join(missing)} in this team.")
    key, plaintext = actions.create_gateway_key(
        team, name=payload.name, actor=actor, agents=payload.agents,
        rate_per_s=payload.rate_per_s, concurrent=payload.concurrent,
        expires_at=timezone.now() + timedelta(seconds=payload.expires_in_s)
        if payload.expires_in_s else None)
    key.key = plaintext  # in this answer only
    return Status(201, key)


@router.get("/gateway-keys/{key_id}", response=GatewayKeyOut)
def get_gateway_key(request, key_id: Id):
    return access.get_for(actor_of(request), GatewayKey.objects.all(), pk=key_id)


@router.delete("/gateway-keys/{key_id}", response=GatewayKeyOut)
def revoke_gateway_key(request, key_id: Id):
    """Revoke a key: the gateway refuses it (401) within HANGAR_GATEWAY_AUTH_TTL_S."""
    actor = actor_of(request)
    key = access.get_for(actor, GatewayKey.objects.all(), Role.OPERATOR, pk=key_id)
    return actions.revoke_gateway_key(key, actor=actor)

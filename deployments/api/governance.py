"""Governance: secrets (`/secrets`), API tokens (`/tokens`) and the audit log
(`/audit`)."""
# No `from __future__ import annotations`: ninja reads the handlers' parameter
# types at import time, and text annotations would leave them undefined.

from ninja import Query, Schema, Status
from ninja.pagination import paginate

from .. import access, actions
from ..models import ApiToken, AuditEvent, Role, Secret
from ..schemas import (
    AuditOut,
    Id,
    SecretIn,
    SecretOut,
    SecretPatch,
    TokenCreated,
    TokenIn,
    TokenOut,
)
from .common import Page, actor_of, router


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

"""Governance: secrets, API tokens and the audit log."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from ninja import Field, Schema
from pydantic import StringConstraints

from .common import Body, Id, Moment, ScopeName, SecretName


class SecretIn(Body):
    team_id: Id
    name: SecretName
    value: Annotated[str, StringConstraints(min_length=1, max_length=65_536)]


class SecretPatch(Body):
    value: Annotated[str, StringConstraints(min_length=1, max_length=65_536)]


class SecretOut(Schema):
    id: int
    team_id: int
    name: str
    created_at: datetime
    updated_at: datetime


class TokenIn(Body):
    team_id: Id
    name: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    scope: ScopeName = "read"
    expires_at: Moment | None = None


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

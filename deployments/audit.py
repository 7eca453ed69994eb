"""Who is acting, and the one function that writes the audit log."""
from __future__ import annotations

import json
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import TYPE_CHECKING, Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import models

from .crypto import EncryptedJSONField, EncryptedTextField
from .models import AuditEvent, Team

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

    from .models import ApiToken

REDACTED = "<redacted>"


@dataclass(frozen=True)
class Actor:
    """The principal behind a write: a user, possibly through an API token."""

    user: AbstractBaseUser | None
    source: str = "system"  # api | ui | admin | system
    ip: str | None = None
    token: ApiToken | None = None
    # Roles per team, computed once per actor (one request) by access.team_roles.
    roles_cache: dict = dataclass_field(default_factory=dict, compare=False, repr=False)

    @property
    def label(self) -> str:
        if self.user is None:
            return self.source
        name = self.user.get_username()
        if self.token is not None:
            return f"{name} (token {self.token.prefix})"
        return name

    @classmethod
    def from_request(cls, request, source: str) -> Actor:
        token = getattr(request, "api_token", None)
        return cls(user=request.user, source=source, ip=client_ip(request), token=token)


SYSTEM = Actor(user=None, source="system")


def client_ip(request) -> str | None:
    # REMOTE_ADDR is what the socket saw; behind a proxy, configure the proxy
    # to set it (uvicorn --proxy-headers with
    # --forwarded-allow-ips) rather than trusting a header here.
    return request.META.get("REMOTE_ADDR") or None


def snapshot(obj: models.Model | None) -> dict[str, Any] | None:
    """A JSON-safe picture of a row for before/after, with secrets redacted."""
    if obj is None:
        return None
    data: dict[str, Any] = {}
    for field in obj._meta.concrete_fields:
        if isinstance(field, EncryptedTextField):
            data[field.name] = REDACTED
        elif isinstance(field, EncryptedJSONField):
            value = getattr(obj, field.attname) or {}
            data[field.name] = {key: REDACTED for key in value}
        elif field.name in {"hashed", "password"}:
            continue
        else:
            data[field.attname] = getattr(obj, field.attname)
    return json.loads(json.dumps(data, cls=DjangoJSONEncoder))


def record(
    actor: Actor,
    action: str,
    obj: models.Model | None = None,
    *,
    team_id: int | None = None,
    before: dict | None = None,
    after: dict | None = None,
    object_type: str | None = None,
    object_id: str | None = None,
    object_repr: str | None = None,
) -> AuditEvent:
    """Write one audit row. Call inside the transaction of the change itself."""
    if team_id is None and obj is not None:
        team_id = _team_id_of(obj)
    return AuditEvent.objects.create(
        actor=actor.user if actor.user is not None and actor.user.pk else None,
        actor_label=actor.label,
        token_prefix=actor.token.prefix if actor.token is not None else "",
        team_id=team_id,
        action=action,
        object_type=object_type or (obj._meta.model_name if obj is not None else ""),
        object_id=object_id if object_id is not None else (str(obj.pk) if obj is not None else ""),
        object_repr=(object_repr if object_repr is not None else str(obj) if obj else "")[:200],
        before=before,
        after=after,
        source=actor.source,
        source_ip=actor.ip,
    )


def _team_id_of(obj: models.Model) -> int | None:
    if isinstance(obj, Team):
        return obj.pk
    for path in ("team_id", "agent.team_id", "deployment.agent.team_id"):
        current: Any = obj
        try:
            for part in path.split("."):
                current = getattr(current, part)
        except AttributeError:
            continue
        return current
    return None

"""The verbs on gateway keys: create (shown once, stored hashed) and revoke,
each atomic and audited."""
from __future__ import annotations

import hashlib
import secrets
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from deployments import audit
from deployments.audit import Actor
from deployments.errors import Unprocessable
from deployments.models import Agent, Team

from .models import GatewayKey

KEY_PREFIX = "hgk_"


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@transaction.atomic
def create_gateway_key(team: Team, *, name: str, actor: Actor, agents: list[str] | None = None,
                       rate_per_s: int | None = None, concurrent: int | None = None,
                       expires_at: datetime | None = None) -> tuple[GatewayKey, str]:
    """The new key and its plaintext (never stored; show it once)."""
    errors: dict[str, list[str]] = {}
    name = (name or "").strip(" \t\r\n")
    if not name or len(name) > 100:
        errors["name"] = ["Give a name of 1 to 100 characters."]
    agents = sorted(set(agents or []))
    known = set(Agent.objects.filter(team=team, slug__in=agents).values_list("slug", flat=True))
    if set(agents) - known:
        errors["agents"] = [f"No agent {', '.join(sorted(set(agents) - known))} in this team."]
    for field, value in (("rate_per_s", rate_per_s), ("concurrent", concurrent)):
        if value is not None and not (isinstance(value, int) and 1 <= value <= 1_000_000):
            errors[field] = ["Give a whole number from 1 to 1000000, or none."]
    if expires_at is not None and expires_at <= timezone.now():
        errors["expires_at"] = ["Expiry must be in the future."]
    if errors:
        raise Unprocessable(errors)
    prefix, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    key = GatewayKey.objects.create(
        team=team, name=name, prefix=prefix, hashed=hash_secret(secret), agents=agents,
        rate_per_s=rate_per_s, concurrent=concurrent, expires_at=expires_at,
        created_by=actor.user)
    audit.record(actor, "gateway_key.create", key, after=audit.snapshot(key))
    return key, f"{KEY_PREFIX}{prefix}_{secret}"


@transaction.atomic
def revoke_gateway_key(key: GatewayKey, *, actor: Actor) -> GatewayKey:
    before = audit.snapshot(key)
    if GatewayKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(
            revoked_at=timezone.now()) == 1:
        key.refresh_from_db()
        audit.record(actor, "gateway_key.revoke", key, before=before,
                     after=audit.snapshot(key))
    return key


def authenticate_key(raw: str) -> GatewayKey | None:
    """The active key for a bearer string, or None."""
    if not raw.startswith(KEY_PREFIX):
        return None
    prefix, _, secret = raw[len(KEY_PREFIX):].partition("_")
    key = GatewayKey.objects.filter(prefix=prefix).first()
    if key is None or not key.is_active:
        return None
    if not secrets.compare_digest(key.hashed, hash_secret(secret)):
        return None
    return key

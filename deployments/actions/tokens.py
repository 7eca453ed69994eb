"""API tokens: created for a member with a scope, shown once, stored hashed,
revoked by stamp, and the bearer check the API and the UI share."""
from __future__ import annotations

import hashlib
import secrets as pysecrets
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from .. import audit
from ..audit import Actor
from ..errors import Invalid
from ..models import SCOPE_ROLE, ApiToken, Membership, Team
from .base import acting_user, validated_save

TOKEN_PREFIX = "hgr_"


def hash_token_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@transaction.atomic
def create_token(team: Team, *, name: str, scope: str, expires_at: datetime | None,
                 actor: Actor, user=None) -> tuple[ApiToken, str]:
    """Create a token acting for ``user`` (default: the actor).

    Returns the row and the plaintext, which is never stored.
    """
    user = user or acting_user(actor)
    if user is None:
        raise Invalid("Tokens act for a user.")
    if not Membership.objects.filter(team=team, user=user).exists() and not user.is_superuser:
        raise Invalid({"user": ["The token's user must be a member of the team."]})
    if scope not in SCOPE_ROLE:
        raise Invalid({"scope": [f"Scope must be one of: {', '.join(SCOPE_ROLE)}."]})
    if expires_at is not None and expires_at <= timezone.now():
        raise Invalid({"expires_at": ["Expiry must be in the future."]})
    prefix = pysecrets.token_hex(6)
    secret = pysecrets.token_urlsafe(32)
    token = ApiToken(team=team, user=user, name=name, scope=scope, expires_at=expires_at,
                     prefix=prefix, hashed=hash_token_secret(secret))
    validated_save(token)
    audit.record(actor, "token.create", token, after=audit.snapshot(token))
    return token, f"{TOKEN_PREFIX}{prefix}_{secret}"


@transaction.atomic
def revoke_token(token: ApiToken, *, actor: Actor) -> ApiToken:
    before = audit.snapshot(token)
    if ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(
            revoked_at=timezone.now()) == 1:
        token.refresh_from_db()
        audit.record(actor, "token.revoke", token, before=before, after=audit.snapshot(token))
    return token


def authenticate_token(raw: str) -> ApiToken | None:
    """The active token for a bearer string, or None. Marks it used."""
    if not raw.startswith(TOKEN_PREFIX):
        return None
    prefix, _, secret = raw[len(TOKEN_PREFIX):].partition("_")
    token = ApiToken.objects.select_related("user").filter(prefix=prefix).first()
    if token is None or not token.is_active or not token.user.is_active:
        return None
    if not pysecrets.compare_digest(token.hashed, hash_token_secret(secret)):
        return None
    now = timezone.now()
    if token.last_used_at is None or (now - token.last_used_at).total_seconds() > 60:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    return token

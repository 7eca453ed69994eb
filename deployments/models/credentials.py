"""What a team keeps secret: its secrets (encrypted at rest) and its API
tokens (stored hashed), with the most each token scope may do."""
from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from ..crypto import EncryptedTextField
from .teams import Role, Team
from .validators import name_validator


class Secret(models.Model):
    """A team secret; the value is encrypted at rest and never returned."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="secrets")
    name = models.CharField(max_length=128, validators=[name_validator])
    value = EncryptedTextField()
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["team", "name"], name="secret_team_name_unique")
        ]
        ordering = ["team__slug", "name"]

    def __str__(self) -> str:
        return f"{self.team.slug}/{self.name}"


class TokenScope(models.TextChoices):
    READ = "read", "Read"
    DEPLOY = "deploy", "Deploy"
    ADMIN = "admin", "Admin"


# The most a token of each scope may do, whatever its creator's role.
SCOPE_ROLE = {TokenScope.READ: Role.VIEWER, TokenScope.DEPLOY: Role.OPERATOR,
              TokenScope.ADMIN: Role.ADMIN}


class ApiToken(models.Model):
    """A bearer token for automation, bound to one team and one user.

    Only a SHA-256 of the secret part is stored; the full token
    (``hgr_<prefix>_<secret>``) is shown once, when created.
    """

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="tokens")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, unique=True, editable=False)
    hashed = models.CharField(max_length=64, editable=False)
    scope = models.CharField(max_length=16, choices=TokenScope.choices, default=TokenScope.READ)
    expires_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} (hgr_{self.prefix}_…)"

    @property
    def is_active(self) -> bool:
        now = timezone.now()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)

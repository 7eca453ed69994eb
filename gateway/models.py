"""Gateway keys: how a team's callers reach its real-time agents."""
from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from deployments.models import Team


class GatewayKey(models.Model):
    """A caller's key for ``/gw/<team>/…``, bound to one team and, optionally,
    to some of its agents (``agents``: slugs; empty means all of them).

    Only a SHA-256 of the secret part is stored; the full key
    (``hgk_<prefix>_<secret>``) is shown once, when created. Its own limits
    (requests/s, concurrent) replace the gateway's defaults when set.
    """

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="gateway_keys")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, unique=True, editable=False)
    hashed = models.CharField(max_length=64, editable=False)
    agents = models.JSONField(default=list, blank=True)
    rate_per_s = models.PositiveIntegerField(null=True, blank=True)
    concurrent = models.PositiveIntegerField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                   on_delete=models.SET_NULL, related_name="+")

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} (hgk_{self.prefix}_…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None and (self.expires_at is None
                                            or self.expires_at > timezone.now())

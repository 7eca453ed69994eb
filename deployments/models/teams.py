"""Tenancy: teams, their members with a role, and each team's policy."""
from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from .validators import slug_validator


class Role(models.TextChoices):
    VIEWER = "viewer", "Viewer"
    OPERATOR = "operator", "Operator"
    ADMIN = "admin", "Admin"


ROLE_RANK = {Role.VIEWER: 1, Role.OPERATOR: 2, Role.ADMIN: 3}


class Team(models.Model):
    """The tenancy unit: every agent, target, secret and token belongs to one."""

    name = models.CharField(max_length=100)
    slug = models.SlugField(max_length=63, unique=True, validators=[slug_validator])
    members = models.ManyToManyField(
        settings.AUTH_USER_MODEL, through="Membership", related_name="teams"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug


class Membership(models.Model):
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.VIEWER)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["team", "user"], name="membership_team_user_unique")
        ]
        ordering = ["team__slug", "user__username"]

    def __str__(self) -> str:
        return f"{self.user} in {self.team} ({self.role})"


class Policy(models.Model):
    """Governance limits for a team, enforced by every action that deploys."""

    team = models.OneToOneField(Team, on_delete=models.CASCADE, related_name="policy")
    max_replicas = models.PositiveIntegerField(
        default=50, help_text="largest replica count (or autoscaling maximum) per deployment"
    )
    allowed_target_kinds = models.JSONField(
        default=list, blank=True, help_text="empty means every kind is allowed"
    )
    allowed_patterns = models.JSONField(
        default=list, blank=True, help_text="empty means every pattern is allowed"
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "policies"

    def __str__(self) -> str:
        return f"policy for {self.team}"

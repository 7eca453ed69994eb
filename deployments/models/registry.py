"""The registry: agents, their immutable versions, and the targets they run on."""
from __future__ import annotations

import hashlib
import json
from decimal import Decimal

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone

from ..crypto import EncryptedJSONField
from .teams import Team
from .validators import slug_validator


class Pattern(models.TextChoices):
    BATCH = "batch", "Batch"
    STREAM = "stream", "Stream"
    REALTIME = "realtime", "Real-time"
    EDGE = "edge", "Edge"


class Agent(models.Model):
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="agents")
    slug = models.CharField(max_length=63, validators=[slug_validator])
    name = models.CharField(max_length=100)
    description = models.TextField(blank=True)
    pattern = models.CharField(max_length=16, choices=Pattern.choices)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["team", "slug"], name="agent_team_slug_unique")
        ]
        ordering = ["team__slug", "slug"]

    def __str__(self) -> str:
        return f"{self.team.slug}/{self.slug}"


class ImmutableError(Exception):
    """An immutable row was asked to change."""


class AgentVersion(models.Model):
    """An immutable revision of an agent's spec; identified by ``digest``."""

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    image = models.CharField(max_length=255, blank=True)
    bundle = models.CharField(max_length=255, blank=True, help_text="bundle for edge/local")
    command = models.JSONField(default=list, blank=True)
    env = models.JSONField(default=dict, blank=True)
    secret_refs = models.JSONField(default=list, blank=True)
    cpu = models.DecimalField(
        max_digits=6,
        decimal_places=3,
        default=Decimal("0.5"),
        validators=[MinValueValidator(Decimal("0.01")), MaxValueValidator(Decimal("256"))],
    )
    memory_mb = models.PositiveIntegerField(
        default=256, validators=[MinValueValidator(16), MaxValueValidator(1024 * 1024)]
    )
    port = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1), MaxValueValidator(65535)]
    )
    health = models.JSONField(default=dict, blank=True, help_text="health probe settings")
    model_settings = models.JSONField(default=dict, blank=True)
    pattern_settings = models.JSONField(default=dict, blank=True)
    digest = models.CharField(max_length=71, editable=False)
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )

    SPEC_FIELDS = (
        "image", "bundle", "command", "env", "secret_refs", "cpu", "memory_mb", "port",
        "health", "model_settings", "pattern_settings",
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["agent", "number"], name="version_agent_number_unique")
        ]
        ordering = ["agent", "-number"]

    def __str__(self) -> str:
        return f"{self.agent} v{self.number}"

    def spec(self) -> dict:
        data = {f: getattr(self, f) for f in self.SPEC_FIELDS}
        data["cpu"] = str(Decimal(data["cpu"]).normalize())
        return data

    def compute_digest(self) -> str:
        canonical = json.dumps(self.spec(), sort_keys=True, separators=(",", ":"))
        return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()

    def save(self, *args, **kwargs):
        if self.pk is not None and not self._state.adding:
            raise ImmutableError("agent versions are immutable; create a new version instead")
        self.digest = self.compute_digest()
        super().save(*args, **kwargs)


class TargetKind(models.TextChoices):
    DOCKER = "docker", "Docker"
    KUBERNETES = "kubernetes", "Kubernetes"
    LOCAL = "local", "Local machine"
    EDGE = "edge", "Edge fleet"


class Target(models.Model):
    """Where agents run. ``connection`` is encrypted at rest and never echoed."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="targets")
    name = models.CharField(max_length=63, validators=[slug_validator])
    kind = models.CharField(max_length=16, choices=TargetKind.choices)
    connection = EncryptedJSONField(blank=True, default=dict)
    labels = models.JSONField(default=dict, blank=True)
    price_cpu_hour = models.DecimalField(
        max_digits=10, decimal_places=6, default=Decimal("0"), validators=[MinValueValidator(0)]
    )
    price_gib_hour = models.DecimalField(
        max_digits=10, decimal_places=6, default=Decimal("0"), validators=[MinValueValidator(0)]
    )
    status = models.CharField(max_length=16, default="unknown")
    status_reason = models.CharField(max_length=500, blank=True)
    last_probe_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["team", "name"], name="target_team_name_unique")
        ]
        ordering = ["team__slug", "name"]

    def __str__(self) -> str:
        return f"{self.team.slug}/{self.name} ({self.kind})"

"""Desired state: a deployment of an agent's version on a target, the
revisions of what its instances run, and the health vocabulary both use."""
from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone

from ..crypto import EncryptedTextField
from .registry import Agent, AgentVersion, ImmutableError, Target
from .teams import Team
from .validators import slug_validator


class DeploymentState(models.TextChoices):
    ACTIVE = "active", "Active"
    PAUSED = "paused", "Paused"
    STOPPED = "stopped", "Stopped"


class Health(models.TextChoices):
    HEALTHY = "Healthy"
    PROGRESSING = "Progressing"
    DEGRADED = "Degraded"
    SUSPENDED = "Suspended"
    MISSING = "Missing"
    UNKNOWN = "Unknown"


class RolloutStrategy(models.TextChoices):
    ROLLING = "rolling", "Rolling update"
    RECREATE = "recreate", "Recreate"


class AutoscaleSignal(models.TextChoices):
    NONE = "", "Manual"
    CPU = "cpu", "CPU utilisation (%)"
    INFLIGHT = "inflight", "In-flight requests per replica"
    LAG = "lag", "Stream lag per replica"


class Deployment(models.Model):
    """Desired state: a version of an agent on a target in an environment."""

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="deployments")
    version = models.ForeignKey(AgentVersion, on_delete=models.PROTECT, related_name="+")
    target = models.ForeignKey(Target, on_delete=models.PROTECT, related_name="deployments")
    environment = models.CharField(
        max_length=63, default="production", validators=[slug_validator]
    )
    replicas = models.PositiveIntegerField(default=1, validators=[MaxValueValidator(1000)])
    state = models.CharField(
        max_length=16, choices=DeploymentState.choices, default=DeploymentState.ACTIVE
    )
    autoscale_min = models.PositiveIntegerField(null=True, blank=True)
    autoscale_max = models.PositiveIntegerField(null=True, blank=True)
    autoscale_signal = models.CharField(
        max_length=16, choices=AutoscaleSignal.choices, default="", blank=True
    )
    autoscale_target = models.FloatField(null=True, blank=True)
    rollout_strategy = models.CharField(
        max_length=16, choices=RolloutStrategy.choices, default=RolloutStrategy.ROLLING
    )
    placement = models.JSONField(
        default=dict, blank=True,
        help_text="label selector: also place replicas on the team's targets of the same "
                  "kind whose labels match (spread, then least loaded)",
    )
    generation = models.PositiveBigIntegerField(default=1)
    observed_generation = models.PositiveBigIntegerField(default=0)
    health = models.CharField(max_length=16, choices=Health.choices, default=Health.UNKNOWN)
    health_reason = models.CharField(max_length=500, blank=True, default="not reconciled yet")
    ingest_token = EncryptedTextField(blank=True, default="", editable=False)
    revision = models.ForeignKey(
        "Revision", null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        editable=False, help_text="the revision instances should run (see Revision)",
    )
    restarted_at = models.DateTimeField(
        null=True, blank=True, editable=False,
        help_text="instances created before this are replaced by a rolling pass",
    )
    revision_history_limit = models.PositiveIntegerField(
        default=10, validators=[MinValueValidator(1), MaxValueValidator(100)],
        help_text="how many revisions to keep (revisions an instance still runs are kept too)",
    )
    autoscale_state = models.JSONField(default=dict, blank=True, editable=False)
    reconciled_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["agent", "environment", "target"], name="deployment_unique_env_target"
            ),
            models.CheckConstraint(
                condition=models.Q(autoscale_min__isnull=True)
                | models.Q(autoscale_max__isnull=True)
                | models.Q(autoscale_min__lte=models.F("autoscale_max")),
                name="deployment_autoscale_min_le_max",
            ),
        ]
        ordering = ["agent__team__slug", "agent__slug", "environment"]

    def __str__(self) -> str:
        return f"{self.agent}@{self.environment}"

    @property
    def team(self) -> Team:
        return self.agent.team

    @property
    def name(self) -> str:
        """What an operator types to confirm a dangerous action."""
        return f"{self.agent.slug}@{self.environment}"

    def eligible_targets(self) -> list[Target]:
        """Its own target first, then every target of the same team and kind whose
        labels match the ``placement`` selector."""
        targets = [self.target]
        selector = self.placement or {}
        if selector:
            for target in Target.objects.filter(team_id=self.target.team_id,
                                                kind=self.target.kind).order_by("name"):
                if target.pk != self.target_id and all(
                        target.labels.get(k) == v for k, v in selector.items()):
                    targets.append(target)
        return targets

    def clean(self) -> None:
        errors = {}
        if self.version_id and self.agent_id and self.version.agent_id != self.agent_id:
            errors["version"] = "This version belongs to another agent."
        if self.target_id and self.agent_id and self.target.team_id != self.agent.team_id:
            errors["target"] = "This target belongs to another team."
        lo, hi = self.autoscale_min, self.autoscale_max
        if lo is not None and hi is not None and lo > hi:
            errors["autoscale_min"] = "Minimum replicas cannot exceed maximum."
        if self.autoscale_signal and (lo is None or hi is None or self.autoscale_target is None):
            errors["autoscale_signal"] = "Autoscaling needs min, max and a target value."
        if errors:
            raise ValidationError(errors)


class Revision(models.Model):
    """An immutable snapshot of what a deployment's instances run: its version's
    spec plus what is resolved at deploy time (secret fingerprints, never
    values). Made by ``actions`` whenever that changes; instances point at
    theirs, so the reconciler replaces exactly the instances whose revision is
    not the deployment's current one. See ``deployments/revisions.py``.
    """

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="revisions")
    number = models.PositiveIntegerField()
    version = models.ForeignKey(
        AgentVersion, null=True, on_delete=models.SET_NULL, related_name="+",
        help_text="empty once the version is deleted; the spec snapshot stays",
    )
    spec = models.JSONField()
    digest = models.CharField(max_length=71)
    cause = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
        related_name="+",
    )
    actor_label = models.CharField(max_length=150, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["deployment", "number"],
                                    name="revision_deployment_number_unique")
        ]
        ordering = ["deployment", "-number"]

    def __str__(self) -> str:
        return f"{self.deployment_id} revision {self.number}"

    def save(self, *args, **kwargs):
        if self.pk is not None and not self._state.adding:
            raise ImmutableError("revisions are immutable; make a new revision instead")
        super().save(*args, **kwargs)

# Worst first: a roll-up is as bad as its worst member.
HEALTH_SEVERITY = [Health.DEGRADED, Health.MISSING, Health.UNKNOWN, Health.PROGRESSING,
                   Health.SUSPENDED, Health.HEALTHY]


def worst_health(healths) -> str | None:
    present = set(healths)
    for health in HEALTH_SEVERITY:
        if health in present:
            return health
    return None

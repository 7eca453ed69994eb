"""A deployment's rollout policy, its rollouts (one per new revision), the
analysis measurements taken, and the team webhooks told about them."""
from __future__ import annotations

from django.db import models
from django.utils import timezone

from deployments.models import Deployment, Revision, Team


class Strategy(models.TextChoices):
    CANARY = "canary", "Canary"
    BLUE_GREEN = "blue_green", "Blue-green"


class RolloutPolicy(models.Model):
    """How a deployment moves to a new revision when it is not rolling or
    recreate: canary steps, or blue-green with a preview. Absent: the
    deployment's own ``rollout_strategy`` (rolling or recreate)."""

    deployment = models.OneToOneField(Deployment, on_delete=models.CASCADE,
                                      related_name="rollout_policy")
    strategy = models.CharField(max_length=16, choices=Strategy.choices)
    steps = models.JSONField(default=list, blank=True,
                             help_text="canary: set_weight, pause and analysis steps")
    analysis = models.JSONField(
        default=dict, blank=True,
        help_text="canary: background analysis over the whole rollout; blue-green: the "
                  "pre-promotion analysis")
    auto_promote_s = models.PositiveIntegerField(
        null=True, blank=True, help_text="blue-green: promote this long after the preview "
                                         "is ready (empty: a person promotes)")
    scale_down_delay_s = models.PositiveIntegerField(
        default=30, help_text="blue-green: the old revision is kept this long after a "
                              "promotion, so an abort is instant")
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.deployment} {self.strategy}"


class Phase(models.TextChoices):
    PROGRESSING = "Progressing"
    PAUSED = "Paused"
    HEALTHY = "Healthy"
    DEGRADED = "Degraded"


class Rollout(models.Model):
    """Moving a deployment from its stable revision to a new one (the canary,
    or blue-green's preview). ``weight`` is the canary's share of requests
    (percent); ``step_index`` the step being carried out."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE,
                                   related_name="rollouts")
    number = models.PositiveIntegerField()
    strategy = models.CharField(max_length=16, choices=Strategy.choices)
    steps = models.JSONField(default=list, blank=True)
    analysis = models.JSONField(default=dict, blank=True)
    auto_promote_s = models.PositiveIntegerField(null=True, blank=True)
    scale_down_delay_s = models.PositiveIntegerField(default=30)
    stable_revision = models.ForeignKey(Revision, null=True, on_delete=models.SET_NULL,
                                        related_name="+")
    canary_revision = models.ForeignKey(Revision, null=True, on_delete=models.SET_NULL,
                                        related_name="+")
    phase = models.CharField(max_length=16, choices=Phase.choices, default=Phase.PROGRESSING)
    message = models.CharField(max_length=500, blank=True)
    step_index = models.PositiveIntegerField(default=0)
    step_started_at = models.DateTimeField(null=True, blank=True)
    weight = models.PositiveIntegerField(default=0)
    pause_until = models.DateTimeField(null=True, blank=True)
    aborted = models.BooleanField(default=False)
    promoted_at = models.DateTimeField(null=True, blank=True, help_text="blue-green: the switch")
    scale_down_at = models.DateTimeField(null=True, blank=True)
    # Instance names seen per revision id (runs name their instance; rows go away).
    instances = models.JSONField(default=dict, blank=True)
    # Per analysis ("step:<i>" or "background"): measurements, failures, next due.
    analysis_state = models.JSONField(default=dict, blank=True)
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["deployment", "-number"]
        constraints = [models.UniqueConstraint(fields=["deployment", "number"],
                                               name="rollout_deployment_number_unique")]

    def __str__(self) -> str:
        return f"{self.deployment} rollout {self.number}"

    @property
    def finished(self) -> bool:
        return self.finished_at is not None

    @property
    def current_step(self) -> dict | None:
        return self.steps[self.step_index] if self.step_index < len(self.steps) else None


class Verdict(models.TextChoices):
    PASSED = "passed"
    FAILED = "failed"
    INCONCLUSIVE = "inconclusive"


class Measurement(models.Model):
    """One analysis measurement: every metric of the template, canary beside
    stable, with the condition and what it concluded."""

    rollout = models.ForeignKey(Rollout, on_delete=models.CASCADE, related_name="measurements")
    analysis = models.CharField(max_length=32)  # "step:<i>" or "background"
    at = models.DateTimeField(default=timezone.now)
    weight = models.PositiveIntegerField(default=0)
    verdict = models.CharField(max_length=16, choices=Verdict.choices)
    reason = models.CharField(max_length=500, blank=True)
    metrics = models.JSONField(default=list)

    class Meta:
        ordering = ["rollout", "at", "id"]

    def __str__(self) -> str:
        return f"{self.rollout} {self.analysis} {self.verdict}"


class HookFormat(models.TextChoices):
    GENERIC = "generic", "Generic JSON"
    SLACK = "slack", "Slack-compatible"


EVENT_NAMES = ("rollout.started", "rollout.paused", "rollout.promoted", "rollout.aborted",
               "deployment.health")


class Hook(models.Model):
    """A team webhook told about rollout events and deployment health changes."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="rollout_hooks")
    name = models.CharField(max_length=100)
    url = models.URLField(max_length=500)
    format = models.CharField(max_length=16, choices=HookFormat.choices,
                              default=HookFormat.GENERIC)
    events = models.JSONField(default=list, blank=True,
                              help_text="event names to send (empty: all)")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["team", "name"]
        constraints = [models.UniqueConstraint(fields=["team", "name"],
                                               name="rollout_hook_team_name_unique")]

    def __str__(self) -> str:
        return f"{self.team} hook {self.name}"

    def wants(self, event: str) -> bool:
        return not self.events or event in self.events


class DeliveryState(models.TextChoices):
    PENDING = "pending"
    SENDING = "sending"
    RETRYING = "retrying"
    SENT = "sent"
    FAILED = "failed"
    REFUSED = "refused"


class Notification(models.Model):
    """One event sent to one hook: exactly what was sent, and how it went."""

    hook = models.ForeignKey(Hook, on_delete=models.CASCADE, related_name="notifications")
    deployment = models.ForeignKey(Deployment, null=True, on_delete=models.CASCADE,
                                   related_name="+")
    rollout = models.ForeignKey(Rollout, null=True, blank=True, on_delete=models.SET_NULL,
                                related_name="notifications")
    event = models.CharField(max_length=32)
    text = models.CharField(max_length=500)
    payload = models.JSONField()
    state = models.CharField(max_length=16, choices=DeliveryState.choices,
                             default=DeliveryState.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    status = models.CharField(max_length=200, blank=True)
    attempt_at = models.DateTimeField(null=True, blank=True)
    at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-at", "-id"]

    def __str__(self) -> str:
        return f"{self.event} → {self.hook.name} ({self.state})"

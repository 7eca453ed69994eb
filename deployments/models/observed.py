"""Observed state: the instances a deployment runs, its timeline of events
and the samples its charts draw, all written by the reconciler."""
from __future__ import annotations

from django.db import models
from django.utils import timezone

from .deployments import Deployment, Health, Revision
from .registry import AgentVersion, Target


class InstancePhase(models.TextChoices):
    PENDING = "pending"
    STARTING = "starting"
    RUNNING = "running"
    EXITED = "exited"
    FAILED = "failed"
    LOST = "lost"


class Instance(models.Model):
    """Observed unit of a deployment: a container, pod, process or device."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="instances")
    target = models.ForeignKey(
        Target, null=True, blank=True, on_delete=models.SET_NULL, related_name="instances"
    )
    name = models.CharField(max_length=100)
    version = models.ForeignKey(
        AgentVersion, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    revision = models.ForeignKey(
        Revision, null=True, blank=True, on_delete=models.SET_NULL, related_name="instances"
    )
    generation = models.PositiveBigIntegerField(default=0)
    runtime_id = models.CharField(max_length=255, blank=True)
    host = models.CharField(max_length=255, blank=True)
    address = models.CharField(max_length=255, blank=True)
    phase = models.CharField(
        max_length=16, choices=InstancePhase.choices, default=InstancePhase.PENDING
    )
    health = models.CharField(max_length=16, choices=Health.choices, default=Health.UNKNOWN)
    health_reason = models.CharField(max_length=500, blank=True)
    port = models.PositiveIntegerField(null=True, blank=True)
    restarts = models.PositiveIntegerField(default=0)
    # Restart budget (Nomad-like): attempts within the current interval, then failed.
    restart_attempts = models.PositiveIntegerField(default=0)
    interval_started_at = models.DateTimeField(null=True, blank=True)
    next_restart_at = models.DateTimeField(null=True, blank=True)
    exit_code = models.IntegerField(null=True, blank=True)
    cpu_percent = models.FloatField(null=True, blank=True)
    memory_bytes = models.BigIntegerField(null=True, blank=True)
    inflight = models.FloatField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    ready_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["deployment", "name"], name="instance_deployment_name_unique"
            ),
            # Ports are per target (the driver's port space decides beyond that).
            models.UniqueConstraint(
                fields=["target", "port"], condition=models.Q(port__isnull=False),
                name="instance_target_port_unique",
            ),
        ]
        ordering = ["deployment", "name"]

    def __str__(self) -> str:
        return self.name


class DeploymentEvent(models.Model):
    """The deployment's timeline: what the reconciler did and saw, and why."""

    class Type(models.TextChoices):
        NORMAL = "Normal"
        WARNING = "Warning"

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="events")
    at = models.DateTimeField(default=timezone.now, db_index=True)
    type = models.CharField(max_length=8, choices=Type.choices, default=Type.NORMAL)
    reason = models.CharField(max_length=32)
    message = models.CharField(max_length=1000)
    instance = models.CharField(max_length=100, blank=True)

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [models.Index(fields=["deployment", "-at"])]

    def __str__(self) -> str:
        return f"{self.at:%H:%M:%S} {self.reason}: {self.message}"


class DeploymentSample(models.Model):
    """A point of the deployment's charts, written by the reconciler."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="samples")
    at = models.DateTimeField(default=timezone.now)
    desired = models.PositiveIntegerField()
    ready = models.PositiveIntegerField()
    cpu_percent = models.FloatField(null=True)
    memory_bytes = models.BigIntegerField(null=True)
    inflight = models.FloatField(null=True)

    class Meta:
        indexes = [models.Index(fields=["deployment", "at"])]
        ordering = ["at"]

    def __str__(self) -> str:
        return f"{self.deployment_id}@{self.at:%H:%M:%S} {self.ready}/{self.desired}"

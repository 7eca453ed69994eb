"""Edge state: groups, enrolment tokens, devices, signing keys, bundles, rollouts.

Every row carries its ``team`` (scoped lookups go through ``deployments.access``).
A device's desired state is its ``bundle`` and ``previous_bundle`` plus its
``state``; every change to what a device should see bumps its
``state_version``, which is the ETag basis, so a poll compares one integer.
"""
from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import F
from django.utils import timezone

from deployments.crypto import EncryptedTextField
from deployments.models import Deployment, Team


class DeviceGroup(models.Model):
    """Devices enrolled with the same tokens; a rollout targets one group. A group
    may serve an edge deployment: its devices' spans and health are that
    deployment's."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="device_groups")
    name = models.CharField(max_length=100)
    deployment = models.ForeignKey(Deployment, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="device_groups")
    # The fleet's desired bundle: new devices get it, a finished rollout sets it.
    bundle = models.ForeignKey("Bundle", null=True, blank=True, on_delete=models.PROTECT,
                               related_name="+")
    previous_bundle = models.ForeignKey("Bundle", null=True, blank=True,
                                        on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["team", "name"],
                                               name="edge_group_unique_name")]

    def __str__(self) -> str:
        return self.name


class EnrolmentToken(models.Model):
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="enrolment_tokens")
    group = models.ForeignKey(DeviceGroup, on_delete=models.CASCADE, related_name="tokens")
    name = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=16, unique=True)
    hashed = models.CharField(max_length=64)
    max_uses = models.PositiveIntegerField(default=1)
    uses_left = models.PositiveIntegerField(default=1)
    expires_at = models.DateTimeField()
    revoked_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                   on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.name or self.prefix

    def refusal(self, now=None) -> str | None:
        """Why this token enrols nothing any more, or None."""
        now = now or timezone.now()
        if self.revoked_at is not None:
            return "enrolment token revoked"
        if self.expires_at <= now:
            return "enrolment token expired"
        if self.uses_left <= 0:
            return "enrolment token used up"
        return None


class DeviceState(models.TextChoices):
    ACTIVE = "active", "Active"
    QUARANTINED = "quarantined", "Quarantined"  # connected, told to run nothing
    REVOKED = "revoked", "Revoked"  # 401 from then on


class Device(models.Model):
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="devices")
    group = models.ForeignKey(DeviceGroup, on_delete=models.CASCADE, related_name="devices")
    name = models.CharField(max_length=200)
    labels = models.JSONField(default=dict, blank=True)
    public_key = models.CharField(max_length=64)  # base64 of the raw 32-byte Ed25519 key
    token_hash = models.CharField(max_length=64, unique=True)
    state = models.CharField(max_length=16, choices=DeviceState.choices,
                             default=DeviceState.ACTIVE)
    state_version = models.PositiveBigIntegerField(default=1)
    bundle = models.ForeignKey("Bundle", null=True, blank=True, on_delete=models.PROTECT,
                               related_name="+")
    previous_bundle = models.ForeignKey("Bundle", null=True, blank=True,
                                        on_delete=models.PROTECT, related_name="+")
    enrolled_with = models.ForeignKey(EnrolmentToken, null=True, blank=True,
                                      on_delete=models.SET_NULL, related_name="devices")
    enrolled_at = models.DateTimeField(default=timezone.now)
    last_seen = models.DateTimeField(null=True, blank=True)  # coalesced (edge.auth)
    # The last status report, and its main fields for filters.
    reported = models.JSONField(default=dict, blank=True)
    reported_at = models.DateTimeField(null=True, blank=True)
    phase = models.CharField(max_length=32, blank=True)
    health = models.CharField(max_length=32, blank=True)
    version = models.CharField(max_length=100, blank=True)
    digest = models.CharField(max_length=71, blank=True)
    last_error = models.TextField(blank=True)

    class Meta:
        ordering = ["name", "pk"]
        indexes = [models.Index(fields=["team", "group", "state"])]

    def __str__(self) -> str:
        return self.name

    def online(self, now=None) -> bool:
        if self.last_seen is None:
            return False
        now = now or timezone.now()
        return (now - self.last_seen).total_seconds() <= settings.HANGAR_EDGE_OFFLINE_AFTER_S

    @staticmethod
    def bump(queryset, **changes) -> int:
        """Change what the devices should see (and so their ETag) in one UPDATE."""
        return queryset.update(state_version=F("state_version") + 1, **changes)


class DeviceEvent(models.Model):
    """A device's timeline: enrolment, operator verbs, changes it reported."""

    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="events")
    at = models.DateTimeField(default=timezone.now)
    kind = models.CharField(max_length=32)
    message = models.TextField()

    class Meta:
        ordering = ["-at", "-pk"]

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


class KeyStatus(models.TextChoices):
    CURRENT = "current", "Current"  # signs new bundles
    VALID = "valid", "Valid"  # still verifies (after a rotation), signs nothing new
    RETIRED = "retired", "Retired"  # no longer sent to devices


class SigningKey(models.Model):
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="signing_keys")
    key_id = models.CharField(max_length=32, unique=True)
    public_key = models.CharField(max_length=64)
    private_key = EncryptedTextField()  # base64 raw Ed25519 private bytes, Fernet at rest
    status = models.CharField(max_length=16, choices=KeyStatus.choices,
                              default=KeyStatus.CURRENT)
    created_at = models.DateTimeField(default=timezone.now)
    retired_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [models.UniqueConstraint(
            fields=["team"], condition=models.Q(status="current"),
            name="edge_one_current_key_per_team")]

    def __str__(self) -> str:
        return self.key_id


class Bundle(models.Model):
    """A tar.gz stored content-addressed under HANGAR_EDGE_BUNDLE_DIR."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="bundles")
    digest = models.CharField(max_length=64)  # sha256 hex
    version = models.CharField(max_length=100)
    size = models.PositiveBigIntegerField()
    manifest = models.JSONField(default=dict)
    uploaded_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-uploaded_at", "-pk"]
        constraints = [
            models.UniqueConstraint(fields=["team", "digest"], name="edge_bundle_unique_digest"),
            models.UniqueConstraint(fields=["team", "version"],
                                    name="edge_bundle_unique_version"),
        ]

    def __str__(self) -> str:
        return self.version


class BundleSignature(models.Model):
    bundle = models.ForeignKey(Bundle, on_delete=models.CASCADE, related_name="signatures")
    key = models.ForeignKey(SigningKey, on_delete=models.CASCADE, related_name="signatures")
    signature = models.CharField(max_length=100)  # base64 Ed25519 over the raw digest

    class Meta:
        constraints = [models.UniqueConstraint(fields=["bundle", "key"],
                                               name="edge_one_signature_per_key")]

    def __str__(self) -> str:
        return f"{self.bundle_id} by {self.key_id}"


class RolloutStatus(models.TextChoices):
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed (rolled back)"
    ABORTED = "aborted", "Aborted (rolled back)"


class EdgeRollout(models.Model):
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="edge_rollouts")
    group = models.ForeignKey(DeviceGroup, on_delete=models.CASCADE, related_name="rollouts")
    bundle = models.ForeignKey(Bundle, on_delete=models.PROTECT, related_name="+")
    previous_bundle = models.ForeignKey(Bundle, null=True, blank=True,
                                        on_delete=models.PROTECT, related_name="+")
    status = models.CharField(max_length=16, choices=RolloutStatus.choices,
                              default=RolloutStatus.RUNNING)
    health_threshold = models.PositiveSmallIntegerField(default=90)  # % healthy to advance
    failure_threshold = models.PositiveSmallIntegerField(default=20)  # % failed to halt
    current_wave = models.PositiveSmallIntegerField(default=0)
    reason = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                   on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [models.UniqueConstraint(
            fields=["group"], condition=models.Q(status="running"),
            name="edge_one_running_rollout_per_group")]

    def __str__(self) -> str:
        return f"rollout {self.pk} ({self.status})"


class WaveStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    HEALTHY = "healthy", "Healthy"
    FAILED = "failed", "Failed (rolled back)"
    ABORTED = "aborted", "Aborted (rolled back)"


class RolloutWave(models.Model):
    rollout = models.ForeignKey(EdgeRollout, on_delete=models.CASCADE, related_name="waves")
    index = models.PositiveSmallIntegerField()
    devices = models.ManyToManyField(Device, related_name="waves", blank=True)
    status = models.CharField(max_length=16, choices=WaveStatus.choices,
                              default=WaveStatus.PENDING)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["index"]
        constraints = [models.UniqueConstraint(fields=["rollout", "index"],
                                               name="edge_wave_unique_index")]

    def __str__(self) -> str:
        return f"wave {self.index + 1} of rollout {self.rollout_id}"

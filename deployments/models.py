"""Hangar's state: the registry (teams, agents, versions, targets), desired
state (deployments), observed state (instances) and governance (secrets,
tokens, policies, audit). Models guard their own invariants; verbs that change
state across objects live in ``actions.py``.
"""
from __future__ import annotations

import hashlib
import json
from decimal import Decimal

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.utils import timezone

from .crypto import EncryptedJSONField, EncryptedTextField

slug_validator = RegexValidator(
    r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$",
    "Use lowercase letters, digits and hyphens (1-63 characters, no leading/trailing hyphen).",
)
name_validator = RegexValidator(
    r"^[A-Za-z_][A-Za-z0-9_]{0,127}$",
    "Use letters, digits and underscores, not starting with a digit.",
)


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


class AppendOnlyError(Exception):
    """Audit events cannot be changed or deleted."""


class AuditQuerySet(models.QuerySet):
    def update(self, **kwargs):
        raise AppendOnlyError("the audit log is append-only")

    def delete(self):
        raise AppendOnlyError("the audit log is append-only")


class AuditEvent(models.Model):
    """Append-only record of every write: who, what, before/after, from where.

    Foreign keys are not enforced by the database so that deleting a user or a
    team never rewrites history; PostgreSQL also refuses UPDATE and DELETE on
    the table (see migration 0002).
    """

    at = models.DateTimeField(default=timezone.now, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.DO_NOTHING,
        db_constraint=False, related_name="+",
    )
    actor_label = models.CharField(max_length=150)
    token_prefix = models.CharField(max_length=16, blank=True)
    team = models.ForeignKey(
        Team, null=True, blank=True, on_delete=models.DO_NOTHING, db_constraint=False,
        related_name="+",
    )
    action = models.CharField(max_length=64, db_index=True)
    object_type = models.CharField(max_length=64)
    object_id = models.CharField(max_length=64, blank=True)
    object_repr = models.CharField(max_length=200, blank=True)
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    source = models.CharField(max_length=16)
    source_ip = models.GenericIPAddressField(null=True, blank=True)

    objects = AuditQuerySet.as_manager()

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [models.Index(fields=["object_type", "object_id"])]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.actor_label} {self.action} {self.object_repr}"

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise AppendOnlyError("the audit log is append-only")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise AppendOnlyError("the audit log is append-only")


# Worst first: a roll-up is as bad as its worst member.
HEALTH_SEVERITY = [Health.DEGRADED, Health.MISSING, Health.UNKNOWN, Health.PROGRESSING,
                   Health.SUSPENDED, Health.HEALTHY]


def worst_health(healths) -> str | None:
    present = set(healths)
    for health in HEALTH_SEVERITY:
        if health in present:
            return health
    return None

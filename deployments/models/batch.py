"""Batch: a batch deployment's schedules and the job runs their firings make.

A ``Schedule`` is a cron expression in a time zone with its job policy; its
``next_due_at`` is the next occurrence nobody has claimed yet, and claiming it
(``deployments.batch.scheduler``) is the compare-and-set that makes each
occurrence fire once however many schedulers run. A ``JobRun`` is one attempt
at one occurrence, executed by the runtime as a run-to-completion unit and
supervised level-triggered (``deployments.batch.supervisor``).
"""
from __future__ import annotations

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils.timezone import now as _now

from .deployments import Deployment, Revision
from .registry import Target
from .validators import slug_validator


class ConcurrencyPolicy(models.TextChoices):
    ALLOW = "allow", "Allow concurrent runs"
    FORBID = "forbid", "Skip while one runs"
    REPLACE = "replace", "Replace the running one"


class SuspendedReason(models.TextChoices):
    NONE = "", "Not suspended"
    OPERATOR = "operator", "Suspended by an operator"
    BUDGET = "budget", "Suspended by a budget"


class ScheduleOrigin(models.TextChoices):
    SETTINGS = "settings", "From the version's pattern settings"
    API = "api", "Created through the API or the UI"


class Schedule(models.Model):
    """When a batch deployment's job runs, and how (Nomad's ``crons`` entry,
    Kubernetes' CronJob spec)."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE,
                                   related_name="schedules")
    name = models.CharField(max_length=63, validators=[slug_validator])
    origin = models.CharField(max_length=16, choices=ScheduleOrigin.choices,
                              default=ScheduleOrigin.API, editable=False)
    cron = models.CharField(max_length=200, help_text='5 fields ("*/5 * * * *"), or 6 with '
                                                      "a leading seconds field when enabled")
    seconds = models.BooleanField(default=False,
                                  help_text="the cron has a leading seconds field")
    timezone = models.CharField(max_length=64, default="UTC", help_text="IANA time zone")
    concurrency_policy = models.CharField(max_length=16, choices=ConcurrencyPolicy.choices,
                                          default=ConcurrencyPolicy.FORBID)
    starting_deadline_s = models.PositiveIntegerField(
        null=True, blank=True,
        help_text="an occurrence later than this is missed (empty: no deadline)")
    timeout_s = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1),
                                           MaxValueValidator(7 * 24 * 3600)])
    retries = models.PositiveIntegerField(default=0, validators=[MaxValueValidator(100)])
    backoff_s = models.FloatField(default=10.0, validators=[MinValueValidator(0)])
    backoff_max_s = models.FloatField(default=600.0, validators=[MinValueValidator(0)])
    succeeded_history = models.PositiveIntegerField(default=3,
                                                    validators=[MaxValueValidator(1000)])
    failed_history = models.PositiveIntegerField(default=1, validators=[MaxValueValidator(1000)])
    input = models.JSONField(null=True, blank=True, help_text="passed to the job (AGENT_INPUT)")
    env = models.JSONField(default=dict, blank=True, help_text="extra environment of the job")
    suspended = models.BooleanField(default=False)
    suspended_reason = models.CharField(max_length=16, choices=SuspendedReason.choices,
                                        default="", blank=True)
    next_due_at = models.DateTimeField(null=True, blank=True, editable=False,
                                       help_text="the next unclaimed occurrence")
    missed = models.PositiveBigIntegerField(default=0, editable=False)
    last_fired_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(default=_now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["deployment", "name"],
                                    name="schedule_deployment_name_unique"),
        ]
        indexes = [
            models.Index(fields=["next_due_at"], condition=models.Q(suspended=False),
                         name="schedule_due_idx"),
        ]
        ordering = ["deployment", "name"]

    def __str__(self) -> str:
        return f"{self.deployment_id}/{self.name}"


class JobTrigger(models.TextChoices):
    SCHEDULE = "schedule", "On schedule"
    MANUAL = "manual", "Run now"
    RETRY = "retry", "Retry"
    CATCHUP = "catchup", "Catch-up"


class JobStatus(models.TextChoices):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"


ACTIVE_JOB_STATUSES = (JobStatus.PENDING, JobStatus.RUNNING)
FINISHED_JOB_STATUSES = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.TIMEOUT,
                         JobStatus.CANCELLED, JobStatus.SKIPPED)


class JobRun(models.Model):
    """One attempt at one occurrence of a schedule (or a manual trigger)."""

    schedule = models.ForeignKey(Schedule, on_delete=models.CASCADE, related_name="runs")
    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE,
                                   related_name="job_runs")
    revision = models.ForeignKey(Revision, null=True, blank=True, on_delete=models.SET_NULL,
                                 related_name="+")
    occurrence = models.DateTimeField(help_text="the due time (a manual run: when triggered)")
    trigger = models.CharField(max_length=16, choices=JobTrigger.choices,
                               default=JobTrigger.SCHEDULE)
    attempt = models.PositiveIntegerField(default=1)
    status = models.CharField(max_length=16, choices=JobStatus.choices,
                              default=JobStatus.PENDING)
    reason = models.CharField(max_length=500, blank=True)
    input = models.JSONField(null=True, blank=True)
    not_before = models.DateTimeField(null=True, blank=True,
                                      help_text="a retry waits for its backoff")
    cancel_requested = models.BooleanField(default=False)
    target = models.ForeignKey(Target, null=True, blank=True, on_delete=models.SET_NULL,
                               related_name="+")
    unit_name = models.CharField(max_length=100, blank=True,
                                 help_text="the container/process/Job the runtime runs")
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    exit_code = models.IntegerField(null=True, blank=True)
    logs_tail = models.TextField(blank=True)
    output = models.JSONField(null=True, blank=True,
                              help_text="the last JSON line the job printed on stdout")
    trace_id = models.CharField(max_length=32, blank=True)
    items = models.PositiveIntegerField(null=True, blank=True)
    input_tokens = models.PositiveBigIntegerField(default=0)
    output_tokens = models.PositiveBigIntegerField(default=0)
    cost = models.DecimalField(max_digits=14, decimal_places=6, null=True, blank=True)
    created_at = models.DateTimeField(default=_now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["schedule", "occurrence", "attempt"],
                                    name="jobrun_schedule_occurrence_attempt_unique"),
        ]
        indexes = [
            models.Index(fields=["deployment", "-created_at"], name="jobrun_deployment_idx"),
            models.Index(fields=["schedule", "-created_at"], name="jobrun_schedule_idx"),
            models.Index(fields=["status"], name="jobrun_active_idx",
                         condition=models.Q(status__in=["pending", "running"])),
            models.Index(fields=["trace_id"], name="jobrun_trace_idx"),
        ]
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"job run {self.pk} ({self.status})"

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None:
            return None
        end = self.finished_at or _now()
        return max(0.0, (end - self.started_at).total_seconds())

    @property
    def finished(self) -> bool:
        return self.status in FINISHED_JOB_STATUSES

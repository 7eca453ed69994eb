"""Threads, their checkpoints, their runs in order, the runs' events, crons.

Invariants the database keeps itself: one running run per thread (a partial
unique index), runs of a thread numbered in arrival order (``position``, taken
from the thread row while it is locked), events of a run numbered 1, 2, 3…
(``seq``, unique per run: the SSE event id).
"""
from __future__ import annotations

import uuid

from django.db import models
from django.db.models import Q
from django.utils.timezone import now

from deployments.models import Agent, Team


class ThreadStatus(models.TextChoices):
    IDLE = "idle"
    BUSY = "busy"
    INTERRUPTED = "interrupted"
    ERROR = "error"


class RunStatus(models.TextChoices):
    PENDING = "pending"
    RUNNING = "running"
    SUCCESS = "success"
    ERROR = "error"
    TIMEOUT = "timeout"
    INTERRUPTED = "interrupted"
    REJECTED = "rejected"  # a cron run refused by a busy thread (reject)


ACTIVE = (RunStatus.PENDING, RunStatus.RUNNING)


class Strategy(models.TextChoices):
    REJECT = "reject"
    ENQUEUE = "enqueue"
    INTERRUPT = "interrupt"
    ROLLBACK = "rollback"


class Thread(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="threads")
    # The assistant (agent × environment) of its last run; empty until one ran.
    agent = models.ForeignKey(Agent, null=True, blank=True, on_delete=models.SET_NULL,
                              related_name="threads")
    environment = models.CharField(max_length=63, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=ThreadStatus.choices,
                              default=ThreadStatus.IDLE)
    values = models.JSONField(null=True, blank=True)  # the state now
    runs_made = models.PositiveBigIntegerField(default=0)
    checkpoints_made = models.PositiveBigIntegerField(default=0)
    expires_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=now)
    updated_at = models.DateTimeField(default=now)

    class Meta:
        ordering = ["-updated_at"]
        indexes = [models.Index(fields=["team", "-updated_at"]),
                   models.Index(fields=["agent", "environment", "-updated_at"])]

    def __str__(self) -> str:
        return f"thread {self.id}"


class Checkpoint(models.Model):
    """The thread's state after a successful run (or a state update, a copy,
    an interrupted run's kept partial state)."""

    class Source(models.TextChoices):
        RUN = "run"
        PARTIAL = "partial"  # an interrupted run's streamed state, kept
        UPDATE = "update"
        COPY = "copy"

    thread = models.ForeignKey(Thread, on_delete=models.CASCADE, related_name="checkpoints")
    number = models.PositiveBigIntegerField()
    run = models.ForeignKey("ThreadRun", null=True, blank=True, on_delete=models.SET_NULL,
                            related_name="+")
    source = models.CharField(max_length=16, choices=Source.choices)
    values = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(default=now)

    class Meta:
        ordering = ["thread_id", "number"]
        constraints = [models.UniqueConstraint(fields=["thread", "number"],
                                               name="threads_checkpoint_number")]

    def __str__(self) -> str:
        return f"checkpoint {self.number} of {self.thread_id}"

    @property
    def checkpoint_id(self) -> str:
        return f"{self.thread_id}:{self.number}"


class ThreadRun(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="+")
    thread = models.ForeignKey(Thread, null=True, blank=True, on_delete=models.CASCADE,
                               related_name="runs")  # None: a stateless run
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="+")
    environment = models.CharField(max_length=63)
    position = models.PositiveBigIntegerField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=RunStatus.choices,
                              default=RunStatus.PENDING)
    multitask_strategy = models.CharField(max_length=16, choices=Strategy.choices,
                                          default=Strategy.ENQUEUE)
    applied = models.CharField(max_length=300, blank=True)  # what the strategy did
    input = models.JSONField(null=True, blank=True)
    options = models.JSONField(default=dict, blank=True)  # stream modes, config, context…
    metadata = models.JSONField(default=dict, blank=True)
    output = models.JSONField(null=True, blank=True)
    partial = models.JSONField(null=True, blank=True)  # the last state it streamed
    error = models.TextField(blank=True)
    owner = models.CharField(max_length=100, blank=True)  # the gateway process running it
    lease_until = models.DateTimeField(null=True, blank=True)
    timeout_s = models.FloatField(default=15 * 60)
    trace_id = models.CharField(max_length=32, blank=True)
    replica = models.CharField(max_length=200, blank=True)
    cron = models.ForeignKey("Cron", null=True, blank=True, on_delete=models.SET_NULL,
                             related_name="runs")
    created_at = models.DateTimeField(default=now)
    started_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(default=now)

    class Meta:
        ordering = ["thread_id", "position"]
        constraints = [
            models.UniqueConstraint(fields=["thread"], condition=Q(status="running"),
                                    name="threads_one_running_run"),
            models.UniqueConstraint(fields=["thread", "position"],
                                    name="threads_run_position"),
        ]
        indexes = [models.Index(fields=["status", "lease_until"]),
                   models.Index(fields=["thread", "status", "position"])]

    def __str__(self) -> str:
        return f"run {self.id}"

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None or self.ended_at is None:
            return None
        return (self.ended_at - self.started_at).total_seconds()


class RunEvent(models.Model):
    """One SSE event of a run, kept so a dropped stream resumes from its id."""

    run = models.ForeignKey(ThreadRun, on_delete=models.CASCADE, related_name="events")
    seq = models.PositiveIntegerField()
    event = models.CharField(max_length=64)
    data = models.JSONField(null=True)

    class Meta:
        ordering = ["run_id", "seq"]
        constraints = [models.UniqueConstraint(fields=["run", "seq"], name="threads_event_seq")]

    def __str__(self) -> str:
        return f"event {self.seq} of {self.run_id}"


class Cron(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="+")
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="+")
    environment = models.CharField(max_length=63)
    thread = models.ForeignKey(Thread, null=True, blank=True, on_delete=models.CASCADE,
                               related_name="crons")  # None: a stateless cron
    schedule = models.CharField(max_length=200)
    timezone = models.CharField(max_length=64, default="UTC")
    payload = models.JSONField(default=dict, blank=True)  # input, config, metadata…
    multitask_strategy = models.CharField(max_length=16, choices=Strategy.choices,
                                          default=Strategy.ENQUEUE)
    metadata = models.JSONField(default=dict, blank=True)
    enabled = models.BooleanField(default=True)
    end_time = models.DateTimeField(null=True, blank=True)
    next_due_at = models.DateTimeField(null=True, blank=True)
    last_fired_at = models.DateTimeField(null=True, blank=True)
    fired = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=now)
    updated_at = models.DateTimeField(default=now)

    class Meta:
        ordering = ["created_at"]
        indexes = [models.Index(fields=["enabled", "next_due_at"])]

    def __str__(self) -> str:
        return f"cron {self.id}"

"""Batch: a deployment's schedules and the job runs their firings are.

The shapes bound types and sizes; what JSON Schema cannot say (a cron line
croniter parses, an IANA zone, ``backoff_s <= backoff_max_s``) the verbs check,
answering 422 with the field named."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from django.utils import timezone
from ninja import Field, Schema
from pydantic import StringConstraints

from .. import cron
from .common import Body, Changes, DecimalOut, Id, Moment, SecretName, Slug, integer

ConcurrencyPolicy = Literal["allow", "forbid", "replace"]
JobStatus = Literal["pending", "running", "succeeded", "failed", "timeout", "cancelled",
                    "skipped"]
JobTrigger = Literal["schedule", "manual", "retry", "catchup"]

Cron = Annotated[str, StringConstraints(min_length=1, max_length=200), Field(
    description='five fields (minute hour day month weekday), e.g. "*/5 * * * *", or six '
                'with a leading seconds field when `seconds` is true; @hourly, @daily…')]
Zone = Annotated[str, StringConstraints(min_length=1, max_length=64), Field(
    description="IANA time zone the cron line is read in, e.g. Europe/Paris")]
Seconds = integer(ge=1, le=7 * 24 * 3600)
Backoff = Annotated[float, Field(ge=0, le=86_400)]
Kept = integer(ge=0, le=1000)
Env = dict[SecretName, Annotated[str, StringConstraints(max_length=32_768)]]
JobInput = Annotated[dict[str, Any] | list[Any] | str | None, Field(
    description="passed to the job (as AGENT_INPUT, JSON)")]


def next_runs(schedule, count: int = 5) -> list[datetime]:
    """The schedule's next ``count`` firing times from now, in its own time zone
    (none while it is suspended)."""
    if schedule.suspended:
        return []
    try:
        zone = cron.zone(schedule.timezone)
        found = cron.upcoming(schedule.cron, timezone.now(), count, seconds=schedule.seconds,
                              tz=zone)
    except (cron.BadSchedule, ValueError, KeyError):
        return []
    return [at.astimezone(zone) for at in found]


class ScheduleIn(Body):
    deployment_id: Id
    name: Slug
    cron: Cron
    seconds: bool = Field(False, description="the cron line has a leading seconds field")
    timezone: Zone = "UTC"
    concurrency_policy: ConcurrencyPolicy = Field(
        "forbid", description="a firing while a run is running: allow both, forbid (skip "
                              "the new one, recorded as skipped), replace (stop the old one)")
    starting_deadline_s: Seconds | None = Field(
        None, description="a missed occurrence later than this is not run, only counted")
    timeout_s: Seconds | None = Field(None, description="a run longer than this is killed")
    retries: integer(ge=0, le=100) = 0
    backoff_s: Backoff = Field(10, description="first retry delay; doubles, with jitter")
    backoff_max_s: Backoff = 600
    succeeded_history: Kept = 3
    failed_history: Kept = 1
    input: JobInput = None
    env: Env = Field(default_factory=dict)
    suspended: bool = False


class SchedulePatch(Changes):
    name: Slug = None
    cron: Cron = None
    seconds: bool = None
    timezone: Zone = None
    concurrency_policy: ConcurrencyPolicy = None
    starting_deadline_s: Seconds | None = None
    timeout_s: Seconds | None = None
    retries: integer(ge=0, le=100) = None
    backoff_s: Backoff = None
    backoff_max_s: Backoff = None
    succeeded_history: Kept = None
    failed_history: Kept = None
    input: JobInput = None
    env: Env = None


class ScheduleOut(Schema):
    id: int
    team_id: int = Field(..., alias="deployment.agent.team_id")
    deployment_id: int
    name: str
    origin: str = Field(..., description='"settings" (from the version\'s pattern settings) '
                                         'or "api"')
    cron: str
    seconds: bool
    timezone: str
    concurrency_policy: str
    starting_deadline_s: int | None
    timeout_s: int | None
    retries: int
    backoff_s: float
    backoff_max_s: float
    succeeded_history: int
    failed_history: int
    input: Any
    env: dict[str, str]
    suspended: bool
    suspended_reason: str = Field(..., description='"", "operator" or "budget"')
    next_due_at: datetime | None = Field(..., description="the next occurrence not yet fired")
    next_runs: list[datetime] = Field(
        ..., description="the next five firing times, in the schedule's time zone")
    missed: int = Field(..., description="occurrences missed beyond the starting deadline")
    last_fired_at: datetime | None
    created_at: datetime
    updated_at: datetime

    @staticmethod
    def resolve_next_runs(obj) -> list[datetime]:
        return next_runs(obj)


class TriggerIn(Body):
    model_config = {"extra": "forbid"}

    input: JobInput = Field(None, description="this run's input instead of the schedule's")


class JobRunFilter(Schema):
    status: JobStatus | None = None
    trigger: JobTrigger | None = None
    since: Moment | None = Field(None, description="occurrences at or after")
    until: Moment | None = Field(None, description="occurrences before")


class JobRunOut(Schema):
    id: int
    schedule_id: int
    deployment_id: int
    revision: int | None = Field(None, description="number of the revision it ran")
    occurrence: datetime = Field(..., description="the due time (a manual run: when asked)")
    trigger: str
    attempt: int
    status: str
    reason: str
    unit_name: str = Field(..., description="the container, process or Job that ran it")
    started_at: datetime | None
    finished_at: datetime | None
    duration_s: float | None
    exit_code: int | None
    logs_tail: str
    output: Any = Field(None, description="the last JSON line the job printed")
    trace_id: str = Field(..., description="its spans' trace id (TRACEPARENT)")
    items: int | None = Field(None, description="items processed, when the agent reports them")
    input_tokens: int
    output_tokens: int
    cost: DecimalOut | None = Field(None, description="LLM cost in USD, from its spans")
    created_at: datetime

    @staticmethod
    def resolve_revision(obj) -> int | None:
        return obj.revision.number if obj.revision_id else None

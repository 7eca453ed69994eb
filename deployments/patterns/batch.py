"""Batch: a set of schedules whose firings are jobs run to completion.

A batch deployment keeps no long-running replicas (``desired`` wants 0 on
every runtime, Kubernetes included: Hangar's scheduler creates one Job per
firing, so no CronJob is emitted and exactly-once and DST are Hangar's). Its
schedules live in ``Schedule`` rows — those of the version's settings are
synced in by ``actions.batch.sync_schedules``, API-created ones live beside
them — and its health is read from its job runs.

Settings (``AgentVersion.pattern_settings``): job defaults at the top, and
either one ``schedule`` (a cron; the schedule is called "default") or a
``schedules`` list, each entry overriding the defaults::

    {"timezone": "Europe/Paris", "timeout_s": 600, "retries": 2,
     "schedules": [{"name": "nightly", "cron": "30 2 * * *"},
                   {"name": "fast", "cron": "*/10 * * * * *", "seconds": true,
                    "concurrency_policy": "replace"}]}
"""
from __future__ import annotations

from datetime import timedelta
from typing import Any, ClassVar, Literal

from django.utils import timezone as dj_timezone
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .. import cron
from ..errors import Unprocessable
from ..models import DeploymentState, Health, JobRun, JobStatus
from .base import Desired, Pattern, PatternSettings, Verdict

SLUG = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
Policy = Literal["allow", "forbid", "replace"]


class JobDefaults(BaseModel):
    """What a schedule's job gets unless the schedule says otherwise."""

    model_config = ConfigDict(extra="forbid")

    seconds: bool = Field(False, description="the cron has a leading seconds field")
    timezone: str = Field("UTC", description="IANA name, e.g. Europe/Paris")
    concurrency_policy: Policy = "forbid"
    starting_deadline_s: int | None = Field(None, ge=1, le=7 * 24 * 3600)
    timeout_s: int | None = Field(None, gt=0, le=7 * 24 * 3600)
    retries: int = Field(0, ge=0, le=100)
    backoff_s: float = Field(10.0, ge=0, le=24 * 3600)
    backoff_max_s: float = Field(600.0, ge=0, le=7 * 24 * 3600)
    succeeded_history: int = Field(3, ge=0, le=1000)
    failed_history: int = Field(1, ge=0, le=1000)
    input: Any = Field(None, description="JSON passed to the job as AGENT_INPUT")
    env: dict[str, str] = Field(default_factory=dict)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            cron.zone(value)
        except cron.BadSchedule as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not key or not (key[0].isalpha() or key[0] == "_") or \
                    not all(c.isalnum() or c == "_" for c in key):
                raise ValueError(f"{key!r} is not an environment variable name")
        return value


class ScheduleSpec(JobDefaults):
    """One schedule: a name, a cron and the job policy (the API's body too)."""

    name: str = Field(..., pattern=SLUG, description="unique per deployment")
    cron: str = Field(..., description='5 fields ("*/5 * * * *"), or 6 with seconds on')
    suspended: bool = False

    @model_validator(mode="after")
    def _cron(self) -> ScheduleSpec:
        try:
            self.cron = cron.validate(self.cron, seconds=self.seconds, timezone=self.timezone)
        except cron.BadSchedule as exc:
            raise ValueError(str(exc)) from None
        return self


class BatchSettings(JobDefaults, PatternSettings):
    schedule: str | None = Field(None, description='one cron, e.g. "*/5 * * * *" '
                                                   '(the schedule called "default")')
    schedules: list[dict[str, Any]] = Field(default_factory=list)
    timezone: str | None = Field(None, description="IANA name, e.g. Europe/Paris")  # type: ignore[assignment]

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        return value if value is None else JobDefaults._zone(value)

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None, info) -> str | None:
        if value is None:
            return None
        try:
            return cron.validate(value, seconds=info.data.get("seconds", False))
        except cron.BadSchedule as exc:
            raise ValueError(str(exc)) from None

    @field_validator("schedules")
    @classmethod
    def _schedules(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        names = set()
        for index, entry in enumerate(value):
            if not isinstance(entry, dict):
                raise ValueError(f"schedules.{index}: give an object")
            try:
                ScheduleSpec.model_validate({"timezone": "UTC", **entry})
            except ValidationError as exc:
                raise ValueError("; ".join(
                    f"schedules.{index}.{'.'.join(str(p) for p in e['loc']) or 'cron'}: "
                    f"{e['msg'].removeprefix('Value error, ')}" for e in exc.errors())) from None
            if entry.get("name") in names:
                raise ValueError(f"schedules.{index}.name: {entry['name']!r} is used twice")
            names.add(entry.get("name"))
        return value

    def specs(self) -> list[ScheduleSpec]:
        """Each schedule of these settings, the defaults filled in."""
        given = self.model_dump(exclude_unset=True)
        defaults = {k: v for k, v in given.items() if k in JobDefaults.model_fields}
        if defaults.get("timezone") is None:
            defaults.pop("timezone", None)
        entries = list(self.schedules)
        if self.schedule:
            entries.insert(0, {"name": "default", "cron": self.schedule})
        return [ScheduleSpec.model_validate({**defaults, **entry}) for entry in entries]


def parse_schedule(data: Any, *, partial: ScheduleSpec | None = None) -> ScheduleSpec:
    """A schedule from API or UI input (``partial``: the current one, for an
    update), or Unprocessable (422) with one message per field, each named."""
    if not isinstance(data, dict):
        raise Unprocessable({"__all__": ["Give a JSON object."]})
    merged = {**(partial.model_dump() if partial else {}), **data}
    try:
        return ScheduleSpec.model_validate(merged)
    except ValidationError as exc:
        errors: dict[str, list[str]] = {}
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "cron"
            message = err["msg"].removeprefix("Value error, ")
            errors.setdefault(field, []).append(message)
        raise Unprocessable(errors) from None


class BatchPattern(Pattern):
    name: ClassVar[str] = "batch"
    settings_schema: ClassVar[type[PatternSettings]] = BatchSettings
    # Its schedules, a form for a new one, and its job runs (deployments.views.batch).
    panels: ClassVar[tuple[str, ...]] = ("batch-schedules", "batch-new-schedule",
                                         "batch-history")
    fires_jobs: ClassVar[bool] = True
    # How far back the health roll-up reads runs.
    health_window: ClassVar[timedelta] = timedelta(hours=24)

    def schedule_specs(self, version) -> list[ScheduleSpec]:
        return self.settings(version).specs()

    def desired(self, deployment, version, *, features) -> Desired:
        # No long-running replicas, and no CronJob: Hangar's scheduler fires jobs.
        return Desired(replicas=0)

    def instance_health(self, *, runtime, probe, age_s: float, deadline_s: float) -> Verdict:
        return Verdict(Health.PROGRESSING, "a batch deployment keeps no replicas")

    def rollup(self, deployment, rows, *, is_current=None, unreachable: dict[str, str]
               ) -> Verdict:
        """Health from its job runs: the latest finished run of each schedule
        decides (a failed or timed-out one is Degraded), running ones make it
        Progressing only when nothing has finished yet."""
        d = deployment
        leftover = [r for r in rows if r.pk is not None]
        if leftover:
            return Verdict(Health.PROGRESSING, f"removing {len(leftover)} long-running "
                                               "instance(s) (a batch deployment keeps none)",
                           requeue_in=2)
        if d.state == DeploymentState.PAUSED:
            return Verdict(Health.SUSPENDED, "paused: no schedule fires", converged=True)
        if d.state == DeploymentState.STOPPED:
            return Verdict(Health.SUSPENDED, "stopped", converged=True)
        if unreachable:
            return Verdict(Health.UNKNOWN, "cannot reach " + "; ".join(
                f"{name}: {why}" for name, why in unreachable.items()))
        since = dj_timezone.now() - self.health_window
        schedules = list(d.schedules.all())
        if not schedules:
            return Verdict(Health.HEALTHY, "no schedules yet", converged=True)
        running = JobRun.objects.filter(deployment=d, status=JobStatus.RUNNING).count()
        bad, good = [], 0
        for schedule in schedules:
            last = (JobRun.objects.filter(schedule=schedule, created_at__gte=since)
                    .exclude(status__in=[JobStatus.PENDING, JobStatus.RUNNING,
                                         JobStatus.SKIPPED, JobStatus.CANCELLED])
                    .order_by("-finished_at", "-pk").first())
            if last is None:
                continue
            if last.status == JobStatus.SUCCEEDED:
                good += 1
            else:
                bad.append(f"{schedule.name}: last run {last.status}"
                           f"{' (' + last.reason + ')' if last.reason else ''}")
        live = [s for s in schedules if not s.suspended]
        summary = (f"{len(live)} of {len(schedules)} schedule(s) active; "
                   f"{running} job(s) running")
        if bad:
            return Verdict(Health.DEGRADED, f"{summary}; " + "; ".join(bad[:3]), converged=True)
        if not live:
            return Verdict(Health.SUSPENDED, f"{summary}: every schedule is suspended",
                           converged=True)
        if not good and running:
            return Verdict(Health.PROGRESSING, f"{summary}; first run in progress",
                           converged=True)
        return Verdict(Health.HEALTHY, summary, converged=True)

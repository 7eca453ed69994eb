"""Making job runs, and the live events of schedules and runs."""
from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any

from . import events
from .models import JobRun, JobStatus, JobTrigger, Schedule


def new_trace_id() -> str:
    """A W3C trace id (32 hex digits, not all zero): the job's root span joins it."""
    return secrets.token_hex(16)


def build_run(schedule: Schedule, *, occurrence: datetime,
              trigger: str = JobTrigger.SCHEDULE, attempt: int = 1, input: Any = None,
              not_before: datetime | None = None, status: str = JobStatus.PENDING,
              reason: str = "") -> JobRun:
    """A pending run of ``schedule``, not saved yet."""
    return JobRun(
        schedule=schedule, deployment_id=schedule.deployment_id,
        occurrence=occurrence, trigger=trigger, attempt=attempt, status=status, reason=reason,
        input=schedule.input if input is None else input, not_before=not_before,
        trace_id=new_trace_id())


def make_run(schedule: Schedule, **fields) -> JobRun:
    """A pending run of ``schedule`` (call inside the transaction that claims
    it), published after commit; ``fields`` as for :func:`build_run`."""
    run = build_run(schedule, **fields)
    run.save(force_insert=True)
    changed(run, team_id=team_of(schedule))
    return run


def team_of(obj) -> int:
    deployment = obj.deployment
    return deployment.agent.team_id


def changed(run: JobRun, *, team_id: int | None = None) -> None:
    """Publish ``job_run.changed`` after commit."""
    team_id = team_id if team_id is not None else team_of(run)
    events.publish(team_id, events.JobRunChanged(
        deployment=run.deployment_id, schedule=run.schedule_id, run=run.pk, status=run.status),
        deployment_id=run.deployment_id)


def schedule_changed(schedule: Schedule, *, team_id: int | None = None) -> None:
    """Publish ``schedule.changed`` after commit."""
    team_id = team_id if team_id is not None else team_of(schedule)
    events.publish(team_id, events.ScheduleChanged(
        deployment=schedule.deployment_id, schedule=schedule.pk),
        deployment_id=schedule.deployment_id)

"""Batch: schedules and job runs. Every verb is atomic, audited, checked
against the deployment's state and the team's policy, and publishes its live
event (and wakes the supervisor) after commit.

``sync_schedules`` keeps the schedules of a version's pattern settings in step
with the deployment (called when it is created or moves to another version);
``deployment_state_changed`` suspends a deployment's schedules when a budget
pauses it and resumes them when it is active again.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import transaction
from django.utils import timezone

from .. import audit, cron, effects, events
from .. import jobs as runs
from ..audit import Actor
from ..errors import Conflict, Invalid
from ..models import (
    ACTIVE_JOB_STATUSES,
    Deployment,
    DeploymentState,
    JobRun,
    JobStatus,
    JobTrigger,
    Schedule,
    ScheduleOrigin,
    SuspendedReason,
)
from ..patterns import get_pattern
from ..patterns.batch import ScheduleSpec, parse_schedule
from .base import team_policy, validated_save

SPEC_FIELDS = tuple(ScheduleSpec.model_fields)


def supervise_soon() -> None:
    """Wake the supervisor after commit (beat ticks it anyway)."""
    effects.enqueue_on_commit("deployments.tasks.batch_tick")


def _batch_only(deployment: Deployment) -> None:
    if not get_pattern(deployment.agent.pattern).fires_jobs:
        raise Invalid({"deployment_id": [f"{deployment.name} is a {deployment.agent.pattern} "
                                         "deployment; only batch deployments have schedules."]})


def _spec_of(schedule: Schedule) -> ScheduleSpec:
    return ScheduleSpec.model_construct(**{f: getattr(schedule, f) for f in SPEC_FIELDS})


def next_due(schedule: Schedule, after: datetime) -> datetime:
    return cron.next_after(schedule.cron, after, seconds=schedule.seconds, tz=schedule.timezone)


def _apply(schedule: Schedule, spec: ScheduleSpec, now: datetime) -> list[str]:
    """Set the spec's fields on the row; recompute the next occurrence when
    the calendar changed (a new cron, zone or seconds flag, or a resume)."""
    changed = [f for f in SPEC_FIELDS if getattr(schedule, f) != getattr(spec, f)]
    for name in changed:
        setattr(schedule, name, getattr(spec, name))
    if spec.suspended and not schedule.suspended_reason:
        schedule.suspended_reason = SuspendedReason.OPERATOR
    if not spec.suspended:
        schedule.suspended_reason = SuspendedReason.NONE
    if schedule.next_due_at is None or {"cron", "seconds", "timezone", "suspended"} & set(
            changed):
        schedule.next_due_at = next_due(schedule, now)
    return changed


def _save(schedule: Schedule) -> None:
    validated_save(schedule, conflict=f"This deployment already has a schedule called "
                                      f"{schedule.name!r}.")


@transaction.atomic
def create_schedule(deployment: Deployment, data: dict[str, Any], actor: Actor, *,
                    origin: str = ScheduleOrigin.API, now: datetime | None = None) -> Schedule:
    """A new schedule; its first occurrence is the next one after now."""
    _batch_only(deployment)
    spec = parse_schedule(data)
    schedule = Schedule(deployment=deployment, origin=origin)
    _apply(schedule, spec, now or timezone.now())
    _save(schedule)
    audit.record(actor, "schedule.create", schedule, after=audit.snapshot(schedule))
    runs.schedule_changed(schedule)
    return schedule


@transaction.atomic
def update_schedule(schedule: Schedule, data: dict[str, Any], actor: Actor, *,
                    now: datetime | None = None) -> Schedule:
    """Change some fields (the others are kept); a new calendar starts from now."""
    schedule = Schedule.objects.select_for_update().select_related(
        "deployment__agent").get(pk=schedule.pk)
    before = audit.snapshot(schedule)
    spec = parse_schedule(data, partial=_spec_of(schedule))
    if not _apply(schedule, spec, now or timezone.now()):
        return schedule
    _save(schedule)
    audit.record(actor, "schedule.update", schedule, before=before,
                 after=audit.snapshot(schedule))
    runs.schedule_changed(schedule)
    return schedule


@transaction.atomic
def delete_schedule(schedule: Schedule, actor: Actor) -> None:
    """Delete it and its history; its running jobs are stopped by the supervisor
    (their units are found by label and removed)."""
    schedule = Schedule.objects.select_for_update().select_related(
        "deployment__agent").get(pk=schedule.pk)
    active = list(schedule.runs.filter(status__in=ACTIVE_JOB_STATUSES).exclude(unit_name=""))
    if active:
        raise Conflict(f"Schedule {schedule.name!r} has {len(active)} job(s) running; "
                       "cancel them or wait for them to finish before deleting it.")
    audit.record(actor, "schedule.delete", schedule, before=audit.snapshot(schedule))
    team_id = runs.team_of(schedule)
    schedule_id, deployment_id = schedule.pk, schedule.deployment_id
    schedule.delete()
    events.publish(team_id, events.ScheduleChanged(deployment=deployment_id,
                                                   schedule=schedule_id),
                   deployment_id=deployment_id)


def _runnable(deployment: Deployment) -> None:
    """A job may run now: the deployment is active and the policy allows its target."""
    if deployment.state != DeploymentState.ACTIVE:
        raise Conflict(f"{deployment.name} is {deployment.state}; resume it to run jobs.")
    kinds = team_policy(deployment.agent.team_id).allowed_target_kinds
    if kinds and deployment.target.kind not in kinds:
        raise Invalid({"target": [f"Team policy allows only targets of kind: "
                                  f"{', '.join(kinds)} (this one is {deployment.target.kind})."]})


@transaction.atomic
def trigger_schedule(schedule: Schedule, actor: Actor, input: Any = None, *,
                     now: datetime | None = None) -> JobRun:
    """Run now: a manual job run of the schedule (``input`` overrides its
    input), subject to its concurrency policy like any other run."""
    schedule = Schedule.objects.select_for_update().select_related(
        "deployment__agent", "deployment__target").get(pk=schedule.pk)
    _runnable(schedule.deployment)
    now = now or timezone.now()
    run = runs.make_run(schedule, occurrence=now, trigger=JobTrigger.MANUAL, input=input)
    audit.record(actor, "schedule.trigger", schedule,
                 after={"job_run": run.pk, "input": run.input})
    supervise_soon()
    return run


def _set_suspended(schedule: Schedule, actor: Actor, *, suspended: bool, reason: str,
                   now: datetime | None) -> Schedule:
    schedule = Schedule.objects.select_for_update().select_related(
        "deployment__agent").get(pk=schedule.pk)
    if schedule.suspended == suspended:
        return schedule
    before = audit.snapshot(schedule)
    schedule.suspended, schedule.suspended_reason = suspended, reason
    update = ["suspended", "suspended_reason", "updated_at"]
    if not suspended:  # occurrences while suspended are not caught up
        schedule.next_due_at = next_due(schedule, now or timezone.now())
        update.append("next_due_at")
    schedule.save(update_fields=update)
    audit.record(actor, "schedule.suspend" if suspended else "schedule.resume", schedule,
                 before=before, after=audit.snapshot(schedule))
    runs.schedule_changed(schedule)
    return schedule


@transaction.atomic
def suspend_schedule(schedule: Schedule, actor: Actor) -> Schedule:
    return _set_suspended(schedule, actor, suspended=True, reason=SuspendedReason.OPERATOR,
                          now=None)


@transaction.atomic
def resume_schedule(schedule: Schedule, actor: Actor, *, now: datetime | None = None
                    ) -> Schedule:
    """Resume; the next firing is the next occurrence after now."""
    return _set_suspended(schedule, actor, suspended=False, reason=SuspendedReason.NONE,
                          now=now)


@transaction.atomic
def cancel_job_run(run: JobRun, actor: Actor) -> JobRun:
    """Cancel a pending run at once; a running one is stopped by the supervisor
    (woken after commit), which records it ``cancelled``."""
    run = JobRun.objects.select_for_update().select_related("deployment__agent").get(pk=run.pk)
    if run.finished:
        raise Conflict(f"Job run {run.pk} has already finished ({run.status}).")
    before = audit.snapshot(run)
    if run.status == JobStatus.PENDING and not run.unit_name:
        run.status, run.finished_at = JobStatus.CANCELLED, timezone.now()
        run.reason = f"cancelled by {actor.label}"
        run.save(update_fields=["status", "finished_at", "reason", "updated_at"])
    else:
        run.cancel_requested = True
        run.reason = f"cancel requested by {actor.label}"
        run.save(update_fields=["cancel_requested", "reason", "updated_at"])
    audit.record(actor, "job_run.cancel", run, before=before, after=audit.snapshot(run))
    runs.changed(run)
    supervise_soon()
    return run


# Kept in step by the deployment verbs ---------------------------------------------------


def sync_schedules(deployment: Deployment, actor: Actor, *, now: datetime | None = None) -> None:
    """Make the deployment's settings-made schedules those of its version's
    pattern settings: new ones created, changed ones updated, removed ones
    deleted (API-made schedules are left alone). Call inside the verb's
    transaction."""
    pattern = get_pattern(deployment.agent.pattern)
    wanted = {spec.name: spec for spec in pattern.schedule_specs(deployment.version)}
    existing = {s.name: s for s in deployment.schedules.select_for_update()}
    now = now or timezone.now()
    for name, schedule in existing.items():
        if schedule.origin == ScheduleOrigin.SETTINGS and name not in wanted:
            if not schedule.runs.filter(status__in=ACTIVE_JOB_STATUSES).exists():
                delete_schedule(schedule, actor)
    for name, spec in wanted.items():
        schedule = existing.get(name)
        if schedule is None:
            create_schedule(deployment, spec.model_dump(), actor,
                            origin=ScheduleOrigin.SETTINGS, now=now)
        elif schedule.origin == ScheduleOrigin.SETTINGS:
            update_schedule(schedule, spec.model_dump(), actor, now=now)


def deployment_state_changed(deployment: Deployment, before_state: str, actor: Actor) -> None:
    """A budget that pauses a deployment suspends its schedules (reason
    "budget"); once the deployment is active again, those come back."""
    if deployment.state == before_state:
        return
    if deployment.state == DeploymentState.PAUSED and actor.source == "budget":
        for schedule in deployment.schedules.filter(suspended=False):
            _set_suspended(schedule, actor, suspended=True, reason=SuspendedReason.BUDGET,
                           now=None)
    elif deployment.state == DeploymentState.ACTIVE:
        for schedule in deployment.schedules.filter(suspended=True,
                                                    suspended_reason=SuspendedReason.BUDGET):
            _set_suspended(schedule, actor, suspended=False, reason=SuspendedReason.NONE,
                           now=None)
    supervise_soon()

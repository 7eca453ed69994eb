"""Batch: a deployment's schedules (`/schedules`), running one now, the job runs
its firings made (`/schedules/{id}/runs`), one job run and cancelling it."""
# No `from __future__ import annotations`: ninja reads the handlers' parameter
# types at import time, and text annotations would leave them undefined.

from ninja import Query, Status
from ninja.pagination import paginate

from .. import access, actions
from ..models import Deployment, JobRun, Role, Schedule
from ..schemas import Id
from ..schemas.batch import (
    JobRunFilter,
    JobRunOut,
    ScheduleIn,
    ScheduleOut,
    SchedulePatch,
    TriggerIn,
)
from .common import Page, actor_of, router

SCHEDULES = Schedule.objects.select_related("deployment__agent")
JOB_RUNS = JobRun.objects.select_related("revision")


@router.get("/schedules", response=list[ScheduleOut], tags=["schedules"])
@paginate(Page)
def list_schedules(request, deployment: Id | None = None, team: Id | None = None,
                   suspended: bool | None = None):
    """Schedules of batch deployments, by deployment and name, each with its
    next five firing times in its own time zone."""
    schedules = access.readable(actor_of(request), SCHEDULES.all())
    filters = {"deployment_id": deployment, "deployment__agent__team_id": team,
               "suspended": suspended}
    return schedules.filter(**{k: v for k, v in filters.items() if v is not None}).order_by(
        "deployment_id", "name")


@router.post("/schedules", response={201: ScheduleOut}, tags=["schedules"])
def create_schedule(request, payload: ScheduleIn):
    """A schedule for a batch deployment (422 if the deployment is not batch,
    the cron line does not parse or the zone is unknown; 409 if the name is
    taken in the deployment)."""
    actor = actor_of(request)
    deployment = access.get_for(actor, Deployment.objects.select_related("agent"),
                                Role.OPERATOR, pk=payload.deployment_id)
    data = payload.dict(exclude={"deployment_id"})
    schedule = actions.create_schedule(deployment, data, actor=actor)
    return Status(201, SCHEDULES.get(pk=schedule.pk))


@router.get("/schedules/{schedule_id}", response=ScheduleOut, tags=["schedules"])
def get_schedule(request, schedule_id: Id):
    return access.get_for(actor_of(request), SCHEDULES.all(), pk=schedule_id)


@router.patch("/schedules/{schedule_id}", response=ScheduleOut, tags=["schedules"])
def update_schedule(request, schedule_id: Id, payload: SchedulePatch):
    """Change a schedule; the next occurrence is recomputed from now when the
    cron line, seconds or time zone change."""
    actor = actor_of(request)
    schedule = access.get_for(actor, SCHEDULES.all(), Role.OPERATOR, pk=schedule_id)
    actions.update_schedule(schedule, payload.dict(exclude_unset=True), actor=actor)
    return SCHEDULES.get(pk=schedule.pk)


@router.delete("/schedules/{schedule_id}", response={204: None}, tags=["schedules"])
def delete_schedule(request, schedule_id: Id):
    """Remove a schedule and its history; a running job of it is stopped."""
    actor = actor_of(request)
    schedule = access.get_for(actor, SCHEDULES.all(), Role.OPERATOR, pk=schedule_id)
    actions.delete_schedule(schedule, actor=actor)
    return Status(204, None)


@router.post("/schedules/{schedule_id}/trigger", response={201: JobRunOut},
             tags=["schedules"])
def trigger_schedule(request, schedule_id: Id, payload: TriggerIn):
    """Run it now (a job run with trigger `manual`), with `input` instead of
    the schedule's if given. Its concurrency policy applies: under `forbid`
    the run is recorded as `skipped` while another one runs."""
    actor = actor_of(request)
    schedule = access.get_for(actor, SCHEDULES.all(), Role.OPERATOR, pk=schedule_id)
    fields = payload.dict(exclude_unset=True)
    run = actions.trigger_schedule(schedule, actor=actor, **fields)
    return Status(201, JOB_RUNS.get(pk=run.pk))


@router.post("/schedules/{schedule_id}/suspend", response=ScheduleOut, tags=["schedules"])
def suspend_schedule(request, schedule_id: Id):
    """Nothing fires until it is resumed; occurrences meanwhile are not run."""
    actor = actor_of(request)
    schedule = access.get_for(actor, SCHEDULES.all(), Role.OPERATOR, pk=schedule_id)
    actions.suspend_schedule(schedule, actor=actor)
    return SCHEDULES.get(pk=schedule.pk)


@router.post("/schedules/{schedule_id}/resume", response=ScheduleOut, tags=["schedules"])
def resume_schedule(request, schedule_id: Id):
    """Fire again from the next occurrence after now."""
    actor = actor_of(request)
    schedule = access.get_for(actor, SCHEDULES.all(), Role.OPERATOR, pk=schedule_id)
    actions.resume_schedule(schedule, actor=actor)
    return SCHEDULES.get(pk=schedule.pk)


@router.get("/schedules/{schedule_id}/runs", response=list[JobRunOut], tags=["schedules"])
@paginate(Page)
def list_job_runs(request, schedule_id: Id, filters: Query[JobRunFilter]):
    """The schedule's job runs, newest first (`since`/`until` bound the occurrence)."""
    schedule = access.get_for(actor_of(request), Schedule.objects.all(), pk=schedule_id)
    runs = JOB_RUNS.filter(schedule=schedule)
    if filters.status is not None:
        runs = runs.filter(status=filters.status)
    if filters.trigger is not None:
        runs = runs.filter(trigger=filters.trigger)
    if filters.since is not None:
        runs = runs.filter(occurrence__gte=filters.since)
    if filters.until is not None:
        runs = runs.filter(occurrence__lt=filters.until)
    return runs.order_by("-occurrence", "-attempt", "-id")


@router.get("/job-runs/{job_run_id}", response=JobRunOut, tags=["job runs"])
def get_job_run(request, job_run_id: Id):
    """One job run: outcome, logs tail, output, trace id, tokens, cost and items."""
    return access.get_for(actor_of(request), JOB_RUNS.all(), pk=job_run_id)


@router.post("/job-runs/{job_run_id}/cancel", response=JobRunOut, tags=["job runs"])
def cancel_job_run(request, job_run_id: Id):
    """Stop a pending or running job (it ends `cancelled`); 409 if it has finished."""
    actor = actor_of(request)
    run = access.get_for(actor, JOB_RUNS.all(), Role.OPERATOR, pk=job_run_id)
    actions.cancel_job_run(run, actor=actor)
    return JOB_RUNS.get(pk=run.pk)

"""A batch deployment's page panels and what their buttons do.

Three panels (registered in ``panels.PANELS``, listed by the batch pattern):
``batch-schedules`` (each schedule with its next five firing times in its own
time zone, run now / suspend / resume), ``batch-new-schedule`` (the form) and
``batch-history`` (figures, a duration and throughput chart, the job runs with
status badges and durations, cancel). The first and last refresh live on
``schedule.changed`` / ``job_run.changed``; the form does not, so a live event
never wipes what is being typed. Every button answers with its panel
re-rendered; outsiders get 404, viewers 403 (``scoped_view``)."""
from __future__ import annotations

from datetime import timedelta

from django.contrib import messages
from django.db.models import Count, Q, Sum
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from .. import access, actions
from ..audit import Actor
from ..errors import Conflict, DomainError
from ..forms import ScheduleForm
from ..models import ACTIVE_JOB_STATUSES, Deployment, JobRun, JobStatus, Role, Schedule
from ..schemas.batch import next_runs
from ..web import request_actor, scoped_view
from . import panels
from .common import add_errors

HISTORY_ROWS = 25
CHART_RUNS = 40


def duration_text(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def schedules_context(actor: Actor, deployment: Deployment) -> dict:
    schedules = list(deployment.schedules.all())
    for schedule in schedules:
        schedule.upcoming = next_runs(schedule)
    return {"schedules": schedules}


def new_schedule_context(actor: Actor, deployment: Deployment) -> dict:
    return {"form": ScheduleForm()}


def history_context(actor: Actor, deployment: Deployment) -> dict:
    now = timezone.now()
    runs = list(deployment.job_runs.select_related("schedule", "revision")
                .order_by("-created_at", "-id")[:HISTORY_ROWS])
    for run in runs:
        run.duration_text = duration_text(run.duration_s)
        run.active = run.status in ACTIVE_JOB_STATUSES
    day = deployment.job_runs.filter(created_at__gte=now - timedelta(hours=24)).aggregate(
        total=Count("id"), succeeded=Count("id", filter=Q(status=JobStatus.SUCCEEDED)),
        failed=Count("id", filter=Q(status__in=[JobStatus.FAILED, JobStatus.TIMEOUT])),
        input_tokens=Sum("input_tokens"), output_tokens=Sum("output_tokens"),
        cost=Sum("cost"))
    hour = deployment.job_runs.filter(finished_at__gte=now - timedelta(hours=1),
                                      status=JobStatus.SUCCEEDED).aggregate(
        jobs=Count("id"), items=Sum("items"))
    finished = list(deployment.job_runs.filter(started_at__isnull=False,
                                               finished_at__isnull=False)
                    .exclude(status=JobStatus.SKIPPED)
                    .order_by("-finished_at", "-id")[:CHART_RUNS])[::-1]
    chart = {"t": [], "duration_s": [], "items_per_min": []}
    for run in finished:
        seconds = run.duration_s or 0.0
        chart["t"].append(run.finished_at.isoformat())
        chart["duration_s"].append(round(seconds, 3))
        chart["items_per_min"].append(round(run.items * 60 / seconds, 2)
                                      if run.items is not None and seconds > 0 else None)
    return {"runs": runs, "day": day, "chart": chart,
            "jobs_per_hour": hour["jobs"], "items_per_minute": round((hour["items"] or 0) / 60, 2)}


SCHEDULES = panels.Panel("batch-schedules", "deployments/panels/batch_schedules.html",
                         schedules_context)
NEW_SCHEDULE = panels.Panel("batch-new-schedule", "deployments/panels/batch_new_schedule.html",
                            new_schedule_context)
HISTORY = panels.Panel("batch-history", "deployments/panels/batch_history.html",
                       history_context)


def _panel(request: HttpRequest, actor: Actor, deployment: Deployment, panel: panels.Panel,
           *, status: int = 200, **extra) -> HttpResponse:
    context = {"deployment": deployment,
               "can_write": access.has_role(actor, deployment.agent.team_id, Role.OPERATOR),
               "panel": {**panels.render_context(panel, actor, deployment), **extra}}
    return render(request, panel.template, context, status=status)


def _done(request: HttpRequest, actor: Actor, deployment: Deployment, panel: panels.Panel,
          message: str) -> HttpResponse:
    if not request.htmx:
        messages.success(request, message)
        return redirect("deployments:deployment", deployment_id=deployment.pk)
    return _panel(request, actor, deployment, panel, message=message)


@scoped_view
@require_POST
def schedule_create(request: HttpRequest, deployment_id: int) -> HttpResponse:
    actor = request_actor(request)
    deployment = access.get_for(actor, access.DEPLOYMENTS, Role.OPERATOR, pk=deployment_id)
    form = ScheduleForm(request.POST)
    if form.is_valid():
        try:
            schedule = actions.create_schedule(deployment, form.cleaned_data, actor=actor)
        except Conflict as exc:  # the one conflict a new schedule meets: its name is taken
            form.add_error("name", str(exc.detail))
        except DomainError as exc:
            add_errors(form, exc)
        else:
            message = (f"Schedule {schedule.name} created: it fires on "
                       f"{schedule.cron} ({schedule.timezone}).")
            if not request.htmx:
                messages.success(request, message)
                return redirect("deployments:deployment", deployment_id=deployment.pk)
            response = _panel(request, actor, deployment, NEW_SCHEDULE, message=message)
            response["HX-Trigger"] = "hangar:schedules"
            return response
    if not request.htmx:
        messages.error(request, "The schedule was not created: " + " ".join(
            f"{field}: {' '.join(errors)}" for field, errors in form.errors.items()))
        return redirect("deployments:deployment", deployment_id=deployment.pk)
    return _panel(request, actor, deployment, NEW_SCHEDULE, status=422, form=form)


def _schedule_for(request: HttpRequest, schedule_id: int) -> tuple[Actor, Schedule]:
    actor = request_actor(request)
    schedule = access.get_for(actor, Schedule.objects.select_related(
        "deployment__agent__team", "deployment__version", "deployment__target"),
        Role.OPERATOR, pk=schedule_id)
    return actor, schedule


@scoped_view
@require_POST
def schedule_trigger(request: HttpRequest, schedule_id: int) -> HttpResponse:
    actor, schedule = _schedule_for(request, schedule_id)
    run = actions.trigger_schedule(schedule, actor=actor)
    message = (f"{schedule.name}: run {run.pk} skipped ({run.reason})"
               if run.status == JobStatus.SKIPPED else
               f"{schedule.name}: run {run.pk} started; the history below follows it live.")
    return _done(request, actor, schedule.deployment, SCHEDULES, message)


@scoped_view
@require_POST
def schedule_suspend(request: HttpRequest, schedule_id: int) -> HttpResponse:
    actor, schedule = _schedule_for(request, schedule_id)
    actions.suspend_schedule(schedule, actor=actor)
    return _done(request, actor, schedule.deployment, SCHEDULES,
                 f"{schedule.name} is suspended: nothing fires until it is resumed.")


@scoped_view
@require_POST
def schedule_resume(request: HttpRequest, schedule_id: int) -> HttpResponse:
    actor, schedule = _schedule_for(request, schedule_id)
    actions.resume_schedule(schedule, actor=actor)
    return _done(request, actor, schedule.deployment, SCHEDULES,
                 f"{schedule.name} is resumed: it fires from its next occurrence.")


@scoped_view
@require_POST
def job_run_cancel(request: HttpRequest, run_id: int) -> HttpResponse:
    actor = request_actor(request)
    run = access.get_for(actor, JobRun.objects.select_related(
        "schedule", "deployment__agent__team", "deployment__version", "deployment__target"),
        Role.OPERATOR, pk=run_id)
    actions.cancel_job_run(run, actor=actor)
    return _done(request, actor, run.deployment, HISTORY,
                 f"Run {run.pk} of {run.schedule.name} is being cancelled.")

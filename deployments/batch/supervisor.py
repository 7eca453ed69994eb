"""Supervising job runs, level-triggered: start, observe, stop, record.

A pass reads every pending and running job run and, for each one under its
row lock (``FOR UPDATE SKIP LOCKED``: a run is handled by one worker at a
time, others skip it), compares it with what the runtime reports for its unit
(one listing per deployment and target) and takes one step: start it (the
unit's name is the run's, so a start repeated after a crash finds the unit
instead of making a second one), notice it finished and record the outcome,
kill it at its timeout, stop it when cancelled or replaced, skip it under
``forbid``. Nothing waits for a job, so one worker supervises hundreds, and a
worker killed mid-job loses nothing: the unit keeps running and the next pass,
on any worker, records its end once. Units are removed only after their run's
outcome is committed; one left behind by a crash is removed by a later pass.

Driver calls (starts, log reads of finished jobs, removals) run in a thread
pool. A long-running supervisor (``manage.py batch_scheduler --supervise``)
keeps a :class:`Supervisor` across passes: its drivers keep their connections,
and a pass does not wait for the starts and removals it sets off — the next
pass records how the starts went, and skips a run whose start is still in
flight. Without one (a Celery ``batch_tick``), a pass waits for its calls
before it returns. A run recorded running whose unit is not there yet is
restarted only once ``START_GRACE`` has passed since it was recorded: until
then another supervisor may be starting it.
"""
from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from .. import jobs as runs
from .. import traffic
from ..models import (
    ACTIVE_JOB_STATUSES,
    FINISHED_JOB_STATUSES,
    ConcurrencyPolicy,
    DeploymentState,
    JobRun,
    JobStatus,
    JobTrigger,
    Policy,
    Target,
)
from ..runtimes import RuntimeFailure
from . import history, outcome
from .passes import PARALLEL, Pass, Supervisor

__all__ = ["PARALLEL", "Pass", "Supervisor", "collect", "finish", "settle", "step", "steps",
           "supervise"]

TIMEOUT_EXIT_CODE = 124  # as timeout(1)
JOB_SLOTS = 0x4A42  # "JB": advisory-lock namespace for a deployment's job slots
RECENT = timedelta(minutes=2)  # finished this recently: its unit may still need removing
START_GRACE = timedelta(seconds=60)  # a start in flight elsewhere lands within this
STEP_BATCH = 500  # runs stepped in one transaction


def supervise(now: datetime | None = None, *,
              clock: Callable[[], datetime] = timezone.now,
              supervisor: Supervisor | None = None) -> Pass:
    """One pass over every pending and running job run. With ``supervisor``
    (kept by a long-running loop), the starts and removals it sets off may
    still be in flight when it returns; without, it waits for them."""
    own = supervisor is None
    p = Pass(now=now or clock(), sup=supervisor or Supervisor())
    try:
        settle(p, block=False)  # starts of earlier passes that have landed
        p.sup.reap()
        # Running ones first: those that ended free their slots for pending ones.
        steps(p, JobStatus.RUNNING)
        steps(p, JobStatus.PENDING)
        while p.again:
            step(p, p.again.pop(0))
        collect(p)
        settle(p, block=own)
        _after_commit(p)  # what the starts that failed left to prune
    finally:
        for future in p.logs.values():
            future.cancel()  # prefetched for a run another supervisor has recorded
        if own:
            p.sup.close()
    return p


def _locked(**filters):
    return (JobRun.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("schedule", "deployment__agent__team", "deployment__target",
                            "deployment__version", "target").filter(**filters))


def steps(p: Pass, status: str) -> None:
    """One step for each run of ``status`` (at most ``STEP_BATCH``), in one
    transaction: one query reads and row-locks them all (``SKIP LOCKED``: the
    runs another supervisor holds are its to step), and the slots of a
    deployment are locked and counted once. Pending runs go by deployment, so
    every supervisor takes the slot locks in the same order (no deadlock)."""
    with transaction.atomic():
        p.slots.clear()
        order = ("deployment_id", "pk") if status == JobStatus.PENDING else ("pk",)
        found = _locked(status=status).exclude(deployment_id__in=p.full).order_by(*order)
        for run in found[:STEP_BATCH]:
            if run.deployment_id in p.full:
                continue  # no slot left in this pass (its reason is set already)
            if run.status == JobStatus.PENDING:
                _pending(p, run)
            else:
                _running(p, run)
    _after_commit(p)


def step(p: Pass, pk: int) -> None:
    with transaction.atomic():
        p.slots.clear()
        run = _locked(pk=pk, status__in=ACTIVE_JOB_STATUSES).first()
        if run is None:
            return
        if run.status == JobStatus.PENDING:
            _pending(p, run)
        else:
            _running(p, run)
    _after_commit(p)


def _after_commit(p: Pass) -> None:
    """Driver calls that wait for the step's commit, run in parallel: starts
    of runs now recorded as running (write-ahead), and removals of units
    whose outcome is recorded (best effort: a later pass removes what is left);
    then the history of the schedules whose runs finished is pruned."""
    while p.starts:
        pk, target, spec, timeout_s = p.starts.pop()
        future = p.sup.pool.submit(p.driver(target).start_job, spec, timeout_s=timeout_s)
        p.sup.launched[pk] = (target, spec.deployment_id, spec.name, future)
    while p.removals:
        target, deployment_id, name = p.removals.pop()
        listing = p.listings.get((target.pk, deployment_id))
        if listing:
            listing.pop(name, None)
        p.sup.remove(target, deployment_id, name)
    while p.prune:
        history.prune(p.prune.popitem()[1])


def settle(p: Pass, *, block: bool = True) -> None:
    """Record how the starts went (with ``block``, waiting for every one;
    without, those that are done): the unit's start time, or the run back to
    pending (a transient failure), or failed (a permanent one)."""
    for pk, (target, deployment_id, name, future) in list(p.sup.launched.items()):
        if not block and not future.done():
            continue
        del p.sup.launched[pk]
        try:
            state = future.result()
        except RuntimeFailure as failure:
            with transaction.atomic():
                run = (JobRun.objects.select_for_update(of=("self",)).select_related(
                    "schedule", "deployment__agent", "deployment__target", "target")
                    .filter(pk=pk, status=JobStatus.RUNNING, started_at=None).first())
                if run is None:
                    continue
                if failure.permanent:
                    finish(p, run, JobStatus.FAILED, reason=f"cannot start: {failure}",
                           retry=False, unit=False)
                else:
                    JobRun.objects.filter(pk=pk).update(
                        status=JobStatus.PENDING, reason=f"start failed, trying again: "
                                                         f"{failure}"[:500])
                    runs.changed(run)
            continue
        p.started += 1
        listing = p.listings.get((target.pk, deployment_id))
        if listing is not None:
            listing[name] = state
        JobRun.objects.filter(pk=pk, started_at=None).update(
            started_at=state.started_at or timezone.now(), reason="")


# Pending: start it, or say why not ------------------------------------------------------

def _pending(p: Pass, run: JobRun) -> None:
    d, schedule = run.deployment, run.schedule
    if run.cancel_requested:
        return finish(p, run, JobStatus.CANCELLED, reason=run.reason or "cancelled")
    if d.state == DeploymentState.STOPPED:
        return finish(p, run, JobStatus.CANCELLED, reason="the deployment is stopped")
    if d.state == DeploymentState.PAUSED:
        return _wait(run, "waiting: the deployment is paused")
    if run.not_before is not None and run.not_before > p.now:
        return _wait(run, f"retry after {run.not_before:%H:%M:%S} UTC (backoff)")
    if d.pk in p.full:  # no slot left in this pass (its reason is set already)
        return None
    if d.pk not in p.slots:  # policies below are decided by one supervisor at a time
        _lock_slots(d.pk)
        p.slots[d.pk] = _running_now(d.pk)
    others = [] if schedule.concurrency_policy == ConcurrencyPolicy.ALLOW else list(
        JobRun.objects.filter(schedule=schedule, status=JobStatus.RUNNING)
        .exclude(pk=run.pk).order_by("pk"))
    if others and schedule.concurrency_policy == ConcurrencyPolicy.FORBID:
        return finish(p, run, JobStatus.SKIPPED,
                      reason=f"forbid: run #{others[0].pk} is still running")
    if others and schedule.concurrency_policy == ConcurrencyPolicy.REPLACE:
        for other in others:
            if not other.cancel_requested:
                other.cancel_requested, other.reason = True, f"replaced by run #{run.pk}"
                other.save(update_fields=["cancel_requested", "reason", "updated_at"])
            p.again.append(other.pk)
        p.again.append(run.pk)
        return _wait(run, "replacing run " + ", ".join(f"#{o.pk}" for o in others))
    limit = _limit(p, d.agent.team_id)
    if p.slots[d.pk] >= limit:
        p.full.add(d.pk)
        waiting = (f"waiting: team policy allows at most {limit} concurrent jobs per "
                   "deployment")
        # Every pending run of it waits for the same reason (one UPDATE, one hint).
        (JobRun.objects.filter(deployment=d, status=JobStatus.PENDING)
         .filter(Q(not_before=None) | Q(not_before__lte=p.now)).exclude(reason=waiting)
         .update(reason=waiting, updated_at=timezone.now()))
        run.reason = waiting
        return runs.changed(run)
    target = d.target
    listing = p.listing(target, d.pk)
    if listing is None:
        return _wait(run, f"waiting: cannot reach {target.name}: {p.unreachable[target.pk]}")
    run.unit_name = run.unit_name or outcome.unit_name(run)
    # A canary gives the new revision its weight's share of the runs (#15).
    run.revision_id = run.revision_id or traffic.job_revision(d, run.pk) or d.revision_id
    state = listing.get(run.unit_name)
    if state is not None and state.phase == "pending":
        state = None  # made but never started (its start failed half-way): start it
    if state is None:  # not started yet: record it running (write-ahead), start after commit
        try:
            spec = outcome.job_spec(run, d)
        except RuntimeFailure as failure:
            return finish(p, run, JobStatus.FAILED, reason=f"cannot start: {failure}",
                          retry=False, unit=False)
        p.starts.append((run.pk, target, spec, schedule.timeout_s))
    run.status, run.target = JobStatus.RUNNING, target
    p.slots[d.pk] += 1
    run.started_at = state.started_at or p.now if state is not None else None
    run.reason = "" if state is not None else "starting"
    run.save(update_fields=["status", "target", "revision", "unit_name", "started_at",
                            "reason", "updated_at"])
    runs.changed(run)


def _wait(run: JobRun, reason: str) -> None:
    if run.reason != reason:
        run.reason = reason[:500]
        run.save(update_fields=["reason", "updated_at"])
        runs.changed(run)


def _limit(p: Pass, team_id: int) -> int:
    """The team policy's limit on a deployment's units, applied to its running jobs."""
    if team_id not in p.limits:
        policy = Policy.objects.filter(team_id=team_id).first()
        p.limits[team_id] = policy.max_replicas if policy else 50
    return p.limits[team_id]


def _lock_slots(deployment_id: int) -> None:
    """A transaction-scoped advisory lock on the deployment's job slots, held
    until this run's start is committed: concurrent supervisors never start
    more than the policy allows, nor two runs of a ``forbid`` schedule."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [JOB_SLOTS, deployment_id])


def _running_now(deployment_id: int) -> int:
    return JobRun.objects.filter(deployment_id=deployment_id, status=JobStatus.RUNNING).count()


# Running: observe it ----------------------------------------------------------------------

def _running(p: Pass, run: JobRun) -> None:
    if run.pk in p.sup.launched:
        return  # its start is in flight from this process: look once it has landed
    d, schedule = run.deployment, run.schedule
    target = run.target or d.target
    listing = p.listing(target, d.pk)
    if listing is None:
        return  # unreachable: look again next pass; nothing is decided blind
    state = listing.get(run.unit_name)
    starting = run.started_at is None and not run.cancel_requested and \
        d.state != DeploymentState.STOPPED
    if starting and (state is None or state.phase == "pending") and \
            p.now - run.updated_at < START_GRACE:
        return  # recorded running just now: another supervisor may be starting it
    if state is None:  # another supervisor may have started it since this pass listed
        state = p.relist(target, d.pk).get(run.unit_name)
    if starting:
        if state is None or state.phase == "pending":
            # Recorded running, but its start never happened or never finished (a crash).
            try:
                p.starts.append((run.pk, target, outcome.job_spec(run, d), schedule.timeout_s))
            except RuntimeFailure as failure:
                return finish(p, run, JobStatus.FAILED, reason=f"cannot start: {failure}",
                              retry=False, unit=False)
            return None
        run.started_at = state.started_at or p.now
        run.save(update_fields=["started_at", "updated_at"])
    stop = None
    if run.cancel_requested:
        stop = (JobStatus.CANCELLED, run.reason or "cancelled")
    elif d.state == DeploymentState.STOPPED:
        stop = (JobStatus.CANCELLED, "the deployment is stopped")
    elif state is None:
        return finish(p, run, JobStatus.FAILED, reason=f"its unit {run.unit_name} is gone "
                                                      f"from {target.name}")
    elif state.phase != "exited" and schedule.timeout_s and run.started_at and \
            p.now - run.started_at >= timedelta(seconds=schedule.timeout_s):
        stop = (JobStatus.TIMEOUT, f"timed out after {schedule.timeout_s}s; killed")
    if stop is not None:
        logs = _logs(p, target, run) if state is not None else ""
        status, reason = stop
        return finish(p, run, status, reason=reason, logs=logs,
                      exit_code=TIMEOUT_EXIT_CODE if status == JobStatus.TIMEOUT else None,
                      unit=state is not None)
    if state.phase != "exited":
        return
    logs = _logs(p, target, run)
    code = state.exit_code if state.exit_code is not None else -1
    extra = state.message if state.message and "code" not in state.message else ""
    reason = "" if code == 0 else f"exit code {code}" + (f": {extra}" if extra else "")
    if state.started_at:
        run.started_at = state.started_at
    finish(p, run, JobStatus.SUCCEEDED if code == 0 else JobStatus.FAILED, reason=reason,
           logs=logs, exit_code=code, finished_at=state.finished_at)


def _logs(p: Pass, target, run: JobRun) -> str:
    future = p.logs.get((target.pk, run.deployment_id, run.unit_name))
    try:
        if future is not None:
            return future.result()
        return p.driver(target).job_logs(run.deployment_id, run.unit_name,
                                         tail=outcome.LOG_TAIL_LINES)
    except RuntimeFailure as failure:
        return f"[hangar] no logs: {failure}"


# Finishing --------------------------------------------------------------------------------

def finish(p: Pass, run: JobRun, status: str, *, reason: str = "", logs: str = "",
           exit_code: int | None = None, finished_at: datetime | None = None,
           unit: bool = True, retry: bool = True) -> None:
    """Record the run's outcome (compare-and-set on its active status), make
    its retry when the policy allows one, and after commit prune the
    schedule's history and remove its unit."""
    was_running = run.status == JobStatus.RUNNING
    output = outcome.output_line(logs) if logs else None
    counts = outcome.usage(output)
    end = finished_at or p.now
    if run.started_at and end < run.started_at:
        end = run.started_at
    updated = JobRun.objects.filter(pk=run.pk, status__in=ACTIVE_JOB_STATUSES).update(
        status=status, reason=reason[:500], logs_tail=outcome.tail(logs), output=output,
        exit_code=exit_code, finished_at=end, started_at=run.started_at,
        input_tokens=counts["input_tokens"], output_tokens=counts["output_tokens"],
        items=counts["items"], updated_at=timezone.now())
    if not updated:
        return
    run.status, run.finished_at = status, end
    p.finished += 1
    p.full.discard(run.deployment_id)  # a slot is free again
    if was_running and run.deployment_id in p.slots:
        p.slots[run.deployment_id] -= 1
    if run.unit_name and status != JobStatus.SKIPPED and unit:
        p.removals.append((run.target or run.deployment.target, run.deployment_id,
                           run.unit_name))
    schedule = run.schedule
    if retry and status in (JobStatus.FAILED, JobStatus.TIMEOUT) and \
            run.attempt <= schedule.retries:
        delay = outcome.backoff(run.attempt, schedule.backoff_s, schedule.backoff_max_s)
        runs.make_run(schedule, occurrence=run.occurrence, trigger=JobTrigger.RETRY,
                      attempt=run.attempt + 1, input=run.input,
                      not_before=p.now + timedelta(seconds=delay),
                      reason=f"attempt {run.attempt + 1} of {schedule.retries + 1}, "
                             f"after {delay:.1f}s")
    runs.changed(run)
    p.prune[schedule.pk] = schedule  # after commit (once per schedule and step)


# Units left behind --------------------------------------------------------------------------

def collect(p: Pass) -> int:
    """Remove units whose run has finished (a crash between the outcome's
    commit and the removal) or no longer exists, for the deployments this pass
    listed and those with runs finished recently."""
    recent = set(JobRun.objects.filter(finished_at__gte=p.now - RECENT)
                 .exclude(unit_name="").exclude(target=None)
                 .values_list("target_id", "deployment_id").distinct())
    targets = {t.pk: t for t in Target.objects.filter(pk__in={t for t, _ in recent})}
    for target_id, deployment_id in sorted(recent):
        p.listing(targets[target_id], deployment_id)
    removed = 0
    for (target_id, deployment_id), listing in list(p.listings.items()):
        if not listing:
            continue
        ids = {int(name.removeprefix("job-")): name for name in listing
               if name.removeprefix("job-").isdigit()}
        active = set(JobRun.objects.filter(pk__in=ids, status__in=ACTIVE_JOB_STATUSES)
                     .values_list("pk", flat=True))
        target = p.sup.drivers[target_id][1].target
        for pk, name in ids.items():
            if pk not in active:
                p.removals.append((target, deployment_id, name))
                removed += 1
    _after_commit(p)
    return removed


__all__ = ["FINISHED_JOB_STATUSES", "Pass", "Supervisor", "collect", "finish", "step", "supervise"]

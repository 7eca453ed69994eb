"""Runs: admitting one under a multitask strategy (double-texting), its events,
its end, cancels and deletes."""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from deployments import audit
from deployments.audit import Actor
from deployments.errors import Conflict, Invalid, NotFound

from ..models import (
    ACTIVE,
    Checkpoint,
    RunEvent,
    RunStatus,
    Strategy,
    Thread,
    ThreadRun,
    ThreadStatus,
)
from .base import (
    STRATEGIES,
    Admission,
    Assistant,
    TooLarge,
    _checkpoint,
    _notify_stop,
    _start_next,
    check_size,
    get_thread,
    parse_uuid,
)
from .threads import create_thread


def validate_strategy(value, default: str) -> str:
    if value is None:
        return default or Strategy.ENQUEUE
    if value not in STRATEGIES:
        raise Invalid({"multitask_strategy": [
            f"Unknown strategy {value!r}; use reject, enqueue, interrupt or rollback."]})
    return value


def admit(assistant: Assistant, *, thread_id, owner: str, input=None, options=None,
          metadata=None, strategy: str | None = None, if_not_exists: str = "reject",
          cron_id=None, actor: Actor | None = None, queue: bool = False) -> Admission:
    """Make a run on a thread (or a stateless one, ``thread_id`` None), deciding
    what happens to the thread's active runs by its multitask strategy. With
    ``queue`` (a cron firing outside the gateway) the run is left pending for a
    gateway process to start.

    The common case — a run this process starts now on an existing idle thread —
    is one round trip to PostgreSQL (``hangar_threads_admit_idle``, migration
    0002: the same lock, checks and writes as below, in one statement). A
    missing or busy thread, a cron's run and other databases take the ORM path."""
    strategy = validate_strategy(strategy, assistant.strategy)
    if if_not_exists not in ("create", "reject"):
        raise Invalid({"if_not_exists": ["Use create or reject."]})
    if metadata is not None and not isinstance(metadata, dict):
        raise Invalid({"metadata": ["Give an object."]})
    check_size(input, "input")
    if thread_id is not None and not queue and cron_id is None \
            and connection.vendor == "postgresql":
        admitted = _admit_idle(assistant, parse_uuid(thread_id), owner, input,
                               options or {}, metadata or {}, strategy)
        if admitted is not None:
            return admitted
    return _admit(assistant, thread_id=thread_id, owner=owner, input=input, options=options,
                  metadata=metadata, strategy=strategy, if_not_exists=if_not_exists,
                  cron_id=cron_id, actor=actor, queue=queue)


def _admit_idle(assistant: Assistant, thread_id: uuid.UUID, owner: str, input, options: dict,
                metadata: dict, strategy: str) -> Admission | None:
    """The run started on the idle thread ``thread_id``; None when the thread is
    missing (another team's too) or has active runs (then nothing was written)."""
    run = ThreadRun(team_id=assistant.team_id, agent_id=assistant.agent_id,
                    environment=assistant.environment, multitask_strategy=strategy,
                    input=input, options=options, metadata=metadata,
                    timeout_s=assistant.timeout_s, thread_id=thread_id,
                    status=RunStatus.RUNNING, owner=owner)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT * FROM hangar_threads_admit_idle(%s, %s, %s, %s, %s, %s, %s::jsonb, "
            "%s::jsonb, %s::jsonb, %s, %s, %s)",
            [assistant.team_id, thread_id, run.pk, assistant.agent_id, assistant.environment,
             strategy, None if input is None else json.dumps(input), json.dumps(options),
             json.dumps(metadata), float(assistant.timeout_s), owner,
             float(settings.HANGAR_THREADS_LEASE_S)])
        outcome, position, at, values = cursor.fetchone()
    if outcome != "started":
        return None
    run.position = position
    run.created_at = run.updated_at = run.started_at = at
    run.lease_until = at + timedelta(seconds=settings.HANGAR_THREADS_LEASE_S)
    run._state.adding = False  # it is stored: a later save is an update
    if isinstance(values, str):  # Django has psycopg hand jsonb over as text (JSONField decodes)
        values = json.loads(values)
    return Admission(run=run, start=True, state=values)


@transaction.atomic
def _admit(assistant: Assistant, *, thread_id, owner: str, input, options, metadata,
           strategy: str, if_not_exists: str, cron_id, actor: Actor | None,
           queue: bool) -> Admission:
    now = timezone.now()
    run = ThreadRun(team_id=assistant.team_id, agent_id=assistant.agent_id,
                    environment=assistant.environment, multitask_strategy=strategy,
                    input=input, options=options or {}, metadata=metadata or {},
                    timeout_s=assistant.timeout_s, cron_id=cron_id, created_at=now,
                    updated_at=now)
    lease = now + timedelta(seconds=settings.HANGAR_THREADS_LEASE_S)
    if thread_id is None:  # stateless
        if not queue:
            run.status, run.owner, run.lease_until, run.started_at = (
                RunStatus.RUNNING, owner, lease, now)
        run.save(force_insert=True)
        return Admission(run=run, start=not queue)
    try:
        thread = get_thread(assistant.team_id, thread_id, lock=True)
    except NotFound:
        if if_not_exists != "create":
            raise
        create_thread(assistant.team_id, thread_id=parse_uuid(thread_id),
                      actor=actor or audit.SYSTEM)
        thread = get_thread(assistant.team_id, thread_id, lock=True)
    active = list(ThreadRun.objects.filter(thread=thread, status__in=ACTIVE)
                  .select_for_update().order_by("position"))
    # The time is read once the thread is held: a run ended by the one before us in
    # the lock's queue ended before this one starts (never stamped the other way).
    now = run.created_at = run.updated_at = timezone.now()
    lease = now + timedelta(seconds=settings.HANGAR_THREADS_LEASE_S)
    stop: list[tuple[str, str]] = []
    start = True
    running = next((r for r in active if r.status == RunStatus.RUNNING), None)
    if active:
        busy_with = running or active[0]
        if strategy == Strategy.REJECT:
            if cron_id is None:
                raise Conflict(f"thread {thread.pk} is busy with run {busy_with.pk} "
                               "(multitask_strategy=reject); that run goes on")
            run.status, run.thread, run.ended_at = RunStatus.REJECTED, thread, now
            run.applied = f"rejected: thread busy with run {busy_with.pk}"
            run.error = run.applied
            thread.runs_made += 1
            run.position = thread.runs_made
            run.save(force_insert=True)
            thread.save(update_fields=["runs_made"])
            return Admission(run=run, start=False)
        if strategy == Strategy.ENQUEUE:
            start = False
            run.applied = f"enqueued behind {len(active)} run(s)"
        elif strategy == Strategy.INTERRUPT:
            if running is not None and running.partial is not None:
                thread.values = running.partial
                _checkpoint(thread, running.partial, Checkpoint.Source.PARTIAL, running)
            ids = [r.pk for r in active]
            ThreadRun.objects.filter(pk__in=ids).update(
                status=RunStatus.INTERRUPTED, ended_at=now, updated_at=now,
                error=f"interrupted by run {run.pk}")
            stop = [(str(r.pk), r.owner) for r in active if r.status == RunStatus.RUNNING]
            run.applied = _listed("interrupted", ids)
        else:  # rollback: the active runs are deleted, the state stays at the last checkpoint
            stop = [(str(r.pk), r.owner) for r in active if r.status == RunStatus.RUNNING]
            ThreadRun.objects.filter(pk__in=[r.pk for r in active]).delete()
            run.applied = _listed("rolled back", [r.pk for r in active])
    start = start and not queue
    if start:
        run.status, run.owner, run.lease_until, run.started_at = (
            RunStatus.RUNNING, owner, lease, now)
    thread.runs_made += 1
    run.position = thread.runs_made
    run.thread = thread
    run.save(force_insert=True)
    thread.status = ThreadStatus.BUSY
    thread.agent_id, thread.environment = assistant.agent_id, assistant.environment
    thread.updated_at = now
    thread.save(update_fields=["status", "agent", "environment", "runs_made", "values",
                               "checkpoints_made", "updated_at"])
    _notify_stop(stop)
    return Admission(run=run, start=start, stop=stop, state=thread.values)


def _listed(done: str, ids: list, shown: int = 5) -> str:
    """What a strategy did to which runs, within the field (300 characters)."""
    named = ", ".join(str(i) for i in ids[:shown])
    more = f" and {len(ids) - shown} more" if len(ids) > shown else ""
    return f"{done} {named}{more}"


@dataclass
class Finished:
    finished: bool  # this call ended the run (False: it had been ended already)
    next: ThreadRun | None = None


def _store_events(run_id, events: list[tuple[int, str, object]]) -> None:
    if events:
        RunEvent.objects.bulk_create(
            [RunEvent(run_id=run_id, seq=seq, event=event, data=data)
             for seq, event, data in events], ignore_conflicts=True)


@transaction.atomic
def store_events(batch: dict) -> None:
    """Events of several runs at once (a run deleted meanwhile is skipped; the runs
    found are held — FOR KEY SHARE — so none is deleted before its events are in)."""
    ids = [uuid.UUID(str(run_id)) for run_id in batch]
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT id FROM {ThreadRun._meta.db_table} WHERE id = ANY(%s) "
                           "FOR KEY SHARE", [ids])
            alive = {row[0] for row in cursor.fetchall()}
    else:
        alive = set(ThreadRun.objects.filter(pk__in=ids).values_list("pk", flat=True))
    rows = [RunEvent(run_id=run_id, seq=seq, event=event, data=data)
            for run_id, events in batch.items() if uuid.UUID(str(run_id)) in alive
            for seq, event, data in events]
    if rows:
        RunEvent.objects.bulk_create(rows, ignore_conflicts=True)


def save_partial(run_id, owner: str, values) -> bool:
    return ThreadRun.objects.filter(pk=run_id, status=RunStatus.RUNNING, owner=owner).update(
        partial=values, updated_at=timezone.now()) == 1


@transaction.atomic
def finish(run_id, owner: str, *, status: str, output=None, state=None, has_state=False,
           error: str = "", events=(), trace_id: str = "", replica: str = "") -> Finished:
    """End a running run of ``owner``: on success the thread's new state is
    checkpointed; then the thread's next pending run is started by ``owner``."""
    row = ThreadRun.objects.filter(pk=run_id).values("thread_id").first()
    if row is None:
        return Finished(False)  # deleted (rollback, thread deleted)
    thread = None
    if row["thread_id"] is not None:
        thread = Thread.objects.select_for_update().filter(pk=row["thread_id"]).first()
        if thread is None:
            return Finished(False)
    if not ThreadRun.objects.select_for_update().filter(pk=run_id).exists():
        return Finished(False)  # deleted while we waited for the thread's lock
    now = timezone.now()  # read with the thread held (see admit)
    _store_events(run_id, list(events))
    if status == RunStatus.SUCCESS:
        try:
            check_size(output, "output")
            if has_state:
                check_size(state)
        except TooLarge as exc:
            status, error, output = RunStatus.ERROR, str(exc.detail), None
    ended = ThreadRun.objects.filter(pk=run_id, status=RunStatus.RUNNING, owner=owner).update(
        status=status, output=output, error=error[:5000], ended_at=now, updated_at=now,
        trace_id=trace_id, replica=replica[:200])
    if not ended:
        return Finished(False)  # interrupted, rolled back or swept meanwhile
    if thread is None:
        return Finished(True)
    run = ThreadRun(pk=run_id)
    if status == RunStatus.SUCCESS and has_state:
        thread.values = state
        _checkpoint(thread, state, Checkpoint.Source.RUN, run)
    nxt = _start_next(thread, owner, now)
    thread.status = (ThreadStatus.BUSY if nxt else ThreadStatus.IDLE
                     if status == RunStatus.SUCCESS else ThreadStatus.ERROR)
    thread.updated_at = now
    thread.save(update_fields=["values", "checkpoints_made", "status", "updated_at"])
    return Finished(True, nxt)


@transaction.atomic
def cancel_run(run: ThreadRun, *, action: str, actor: Actor, owner: str) -> Finished:
    """``interrupt``: the run ends ``interrupted`` (its streamed state kept);
    ``rollback``: it is deleted and the thread keeps the checkpoint before it.
    The thread's next pending run then starts (by ``owner``)."""
    if action not in ("interrupt", "rollback"):
        raise Invalid({"action": ["Use interrupt or rollback."]})
    thread = None
    if run.thread_id is not None:
        thread = Thread.objects.select_for_update().get(pk=run.thread_id)
    current = ThreadRun.objects.select_for_update().filter(pk=run.pk).first()
    now = timezone.now()  # read with the thread held (see admit)
    if current is None:
        raise NotFound(f"no run {run.pk}")
    if current.status not in ACTIVE:
        if action == "rollback":
            raise Conflict(f"run {run.pk} is {current.status}; only an active run rolls back")
        return Finished(False)
    stop = [(str(current.pk), current.owner)] if current.status == RunStatus.RUNNING else []
    _notify_stop(stop)
    was_running = current.status == RunStatus.RUNNING
    if action == "interrupt":
        ThreadRun.objects.filter(pk=run.pk).update(
            status=RunStatus.INTERRUPTED, ended_at=now, updated_at=now,
            error=f"cancelled by {actor.label}")
        if thread is not None and was_running and current.partial is not None:
            thread.values = current.partial
            _checkpoint(thread, current.partial, Checkpoint.Source.PARTIAL, current)
    else:
        ThreadRun.objects.filter(pk=run.pk).delete()
    audit.record(actor, f"run.cancel_{action}", current, team_id=current.team_id,
                 object_type="threadrun")
    if thread is None:
        return Finished(True)
    nxt = _start_next(thread, owner, now) if was_running else None
    if nxt is None and not ThreadRun.objects.filter(thread=thread, status__in=ACTIVE).exists():
        thread.status = (ThreadStatus.INTERRUPTED if action == "interrupt"
                         else ThreadStatus.IDLE)
    elif nxt is not None:
        thread.status = ThreadStatus.BUSY
    thread.updated_at = now
    thread.save(update_fields=["values", "checkpoints_made", "status", "updated_at"])
    return Finished(True, nxt)


@transaction.atomic
def delete_run(run: ThreadRun, *, actor: Actor) -> None:
    current = ThreadRun.objects.select_for_update().filter(pk=run.pk).first()
    if current is None:
        raise NotFound(f"no run {run.pk}")
    if current.status in ACTIVE:
        raise Conflict(f"run {run.pk} is {current.status}; cancel it first")
    audit.record(actor, "run.delete", current, team_id=current.team_id,
                 object_type="threadrun", before={"status": current.status})
    current.delete()

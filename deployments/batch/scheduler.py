"""Firing schedules: each due occurrence is claimed once, in PostgreSQL.

A pass takes due schedules with ``SELECT … FOR UPDATE SKIP LOCKED`` (another
scheduler skips the rows this one holds instead of waiting: the lock is the
claim), and moves each one's ``next_due_at`` past now in the transaction that
makes the occurrence's job run, a batch of schedules at a time (one UPDATE,
one INSERT); the unique (schedule, occurrence, attempt) constraint is the last
guard. So any number of beat or
scheduler processes fire each occurrence exactly once, and one that was down
leaves ``next_due_at`` in the past for the next pass to find: nothing is lost.

Catch-up: of the occurrences that came due since ``next_due_at``, only the
latest may run (one catch-up, not a storm), and only within the schedule's
starting deadline; the others, and the latest when it is past the deadline,
are added to ``missed``. A paused or stopped deployment's schedules, and
suspended ones, are not claimed: nothing fires (a resumed schedule starts from
the next occurrence; a resumed deployment catches up within the deadline).

The clock is injectable (``now``) so tests walk through days in a second.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone
from django.utils.module_loading import import_string

from .. import cron
from .. import jobs as runs
from ..models import DeploymentState, JobRun, JobTrigger, Schedule

CLAIM_BATCH = 200  # schedules per transaction
MAX_WALK = 1000  # occurrences counted per claim (a schedule down for years stops there)
LATE_AFTER = timedelta(seconds=60)  # a firing this late is a catch-up


@dataclass
class Fired:
    runs: list[int] = field(default_factory=list)  # job run ids made
    missed: int = 0
    schedules: int = 0  # schedules claimed


def due_schedules(now: datetime):
    return (Schedule.objects.filter(suspended=False, next_due_at__lte=now,
                                    deployment__state=DeploymentState.ACTIVE)
            .order_by("next_due_at"))


def tick(now: datetime | None = None, *, clock: Callable[[], datetime] = timezone.now) -> Fired:
    """Claim and fire every due occurrence as of ``now``."""
    now = now or clock()
    fired = Fired()
    while True:
        with transaction.atomic():
            batch = list(due_schedules(now).select_for_update(skip_locked=True, of=("self",))
                         .select_related("deployment__agent")[:CLAIM_BATCH])
            fire(batch, now, fired)
        fired.schedules += len(batch)
        if len(batch) < CLAIM_BATCH:
            # Other apps' schedules fire on the same tick (threads' crons): dotted paths
            # of functions taking ``now``, each claiming its own rows the same way.
            for hook in settings.HANGAR_SCHEDULER_HOOKS:
                import_string(hook)(now)
            return fired


def decide(schedule: Schedule, now: datetime) -> tuple[datetime | None, str, int, datetime]:
    """For a due schedule: (the occurrence to fire or None, its trigger, how
    many occurrences are missed, the next occurrence after now)."""
    tz = cron.zone(schedule.timezone)
    due = [schedule.next_due_at]
    for occurrence in cron.occurrences(schedule.cron, schedule.next_due_at,
                                       seconds=schedule.seconds, tz=tz):
        if occurrence > now or len(due) >= MAX_WALK:
            break
        due.append(occurrence)
    latest = due[-1]
    if len(due) >= MAX_WALK:  # very far behind: jump to the latest
        latest = max(latest, cron.previous(schedule.cron, now, seconds=schedule.seconds, tz=tz))
    following = cron.next_after(schedule.cron, now, seconds=schedule.seconds, tz=tz)
    deadline = schedule.starting_deadline_s
    late = now - latest
    if deadline is not None and late > timedelta(seconds=deadline):
        return None, "", len(due), following
    trigger = JobTrigger.CATCHUP if len(due) > 1 or late > LATE_AFTER else JobTrigger.SCHEDULE
    return latest, trigger, len(due) - 1, following


def fire(batch: list[Schedule], now: datetime, fired: Fired) -> None:
    """Move each locked, due schedule on (one UPDATE per distinct outcome: the
    rows are locked, so the values read are the values written over) and make
    the occurrences' runs (one INSERT). The calendar math is done once per
    distinct calendar and due time (schedules that share a cron fire alike)."""
    if not batch:
        return
    made: list[JobRun] = []
    stamp = timezone.now()
    decided: dict[tuple, tuple] = {}
    moves: dict[tuple, list[int]] = {}  # (next due, missed, fired) -> schedule ids
    for schedule in batch:
        key = (schedule.cron, schedule.seconds, schedule.timezone, schedule.next_due_at,
               schedule.starting_deadline_s)
        if key not in decided:
            decided[key] = decide(schedule, now)
        occurrence, trigger, missed, following = decided[key]
        schedule.next_due_at, schedule.updated_at = following, stamp
        schedule.missed += missed
        fired.missed += missed
        if occurrence is not None:
            schedule.last_fired_at = now
            made.append(runs.build_run(schedule, occurrence=occurrence, trigger=trigger))
        moves.setdefault((following, missed, occurrence is not None), []).append(schedule.pk)
    for (following, missed, fired_now), ids in moves.items():
        extra = {"last_fired_at": now} if fired_now else {}
        Schedule.objects.filter(pk__in=ids).update(
            next_due_at=following, missed=F("missed") + missed, updated_at=stamp, **extra)
    try:
        with transaction.atomic():
            JobRun.objects.bulk_create(made)
    except IntegrityError:  # a run of that occurrence exists already: never twice
        made = [run for run in made if _insert_unless_exists(run)]
    fired.runs += [run.pk for run in made]
    # Live pages re-fetch per deployment: one hint each is enough.
    for run in {run.deployment_id: run for run in made}.values():
        runs.changed(run, team_id=run.schedule.deployment.agent.team_id)
    for schedule in {s.deployment_id: s for s in batch}.values():
        runs.schedule_changed(schedule, team_id=schedule.deployment.agent.team_id)


def _insert_unless_exists(run: JobRun) -> bool:
    try:
        with transaction.atomic():
            run.save(force_insert=True)
    except IntegrityError:
        return False
    return True

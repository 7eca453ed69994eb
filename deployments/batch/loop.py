"""A dedicated scheduler (and supervisor) loop, for ``manage.py batch_scheduler``.

Beat's ``batch_tick`` fires due occurrences up to ``HANGAR_BATCH_TICK_MS`` late;
this loop sleeps until the next due occurrence instead (at most the tick), so
firings are claimed within milliseconds of their due time. Any number of these
may run beside beat: claims are row-locked, so each occurrence fires once.
With ``supervise``, it also supervises jobs, every ``busy_s`` while any runs,
keeping one :class:`~.supervisor.Supervisor` across passes (a pass does not
wait for the starts and removals it sets off). Between those passes the
scheduler ticks only when an occurrence is due, or once a tick has gone by
(schedules changed meanwhile, other apps' crons): not on every busy pass.
"""
from __future__ import annotations

import threading
import time
from datetime import timedelta

from django.conf import settings
from django.db.models import Min
from django.utils import timezone

from ..models import ACTIVE_JOB_STATUSES, JobRun
from . import scheduler, supervisor


def run(stop: threading.Event, *, supervise: bool = False, busy_s: float = 0.1) -> None:
    idle_s = settings.HANGAR_BATCH_TICK_S
    # Kept across passes: driver connections, and starts and removals in flight.
    kept = supervisor.Supervisor() if supervise else None
    due = None
    ticked = -idle_s
    try:
        while not stop.is_set():
            if (due is not None and due <= timezone.now()) or \
                    time.monotonic() - ticked >= idle_s:
                scheduler.tick()
                ticked = time.monotonic()
            busy = False
            if kept is not None:
                supervisor.supervise(supervisor=kept)
                busy = bool(kept.launched) or JobRun.objects.filter(
                    status__in=ACTIVE_JOB_STATUSES).exists()
            wait = busy_s if busy else idle_s
            due = scheduler.due_schedules(timezone.now() + timedelta(seconds=wait)).aggregate(
                first=Min("next_due_at"))["first"]
            if due is not None:
                wait = min(wait, max(0.0, (due - timezone.now()).total_seconds()))
            stop.wait(wait)
    finally:
        if kept is not None:
            kept.close()

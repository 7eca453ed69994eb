"""Firing crons: each occurrence claimed once in PostgreSQL, by the batch
pattern's scheduler (``deployments.batch.scheduler.tick`` calls ``tick`` through
``HANGAR_SCHEDULER_HOOKS``, from beat's ``batch_tick`` and ``batch_scheduler``).

As for batch schedules: due crons are taken with ``SELECT … FOR UPDATE SKIP
LOCKED`` and moved past now in the transaction that makes the occurrence's run,
so any number of schedulers fire each occurrence exactly once. The run is made
by ``actions.admit`` under the cron's multitask strategy (a busy thread with
``reject`` records a ``rejected`` run) and left pending; a NOTIFY wakes the
gateway processes, whose sweep starts it. Occurrences missed while nothing
ticked fire once (the latest), like a batch catch-up.
"""
from __future__ import annotations

from datetime import datetime

from django.db import transaction
from django.utils import timezone

from deployments import cron as calendar
from deployments.errors import DomainError

from . import actions
from .assistants import assistant_for

CLAIM_BATCH = 200


def tick(now: datetime | None = None) -> list[str]:
    """Fire every due cron as of ``now``; the ids of the runs made."""
    now = now or timezone.now()
    made: list[str] = []
    with transaction.atomic():
        due = list(actions.due_crons(now).select_for_update(skip_locked=True, of=("self",))
                   .order_by("next_due_at")[:CLAIM_BATCH])
        for found in due:
            occurrence = found.next_due_at
            found.next_due_at = calendar.next_after(found.schedule, now, tz=found.timezone)
            found.last_fired_at, found.updated_at = now, now
            found.fired += 1
            found.save(update_fields=["next_due_at", "last_fired_at", "updated_at", "fired"])
            assistant = assistant_for(found.team_id, found.agent_id, found.environment)
            if assistant is None:
                continue  # the deployment is gone: nothing to run
            payload = found.payload or {}
            try:
                with transaction.atomic():
                    admission = actions.admit(
                        assistant, thread_id=found.thread_id, owner="",
                        input=payload.get("input"),
                        options={"stream_mode": payload.get("stream_mode") or ["values"],
                                 "config": payload.get("config"),
                                 "context": payload.get("context"), "on_disconnect": "continue"},
                        metadata={**found.metadata, "cron_id": str(found.pk),
                                  "cron_occurrence": occurrence.isoformat()},
                        strategy=found.multitask_strategy, cron_id=found.pk, queue=True)
            except DomainError:
                continue  # the thread went away meanwhile
            made.append(str(admission.run.pk))
        if made:
            actions.notify_dispatch()
    return made

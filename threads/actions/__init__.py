"""Every state change of threads, runs and crons: atomic, row-locked, audited.

Double-texting lives in ``admit``: the thread row is locked (``SELECT … FOR
UPDATE``) for the whole decision, so two runs posted in the same millisecond
are decided one after the other, and the database keeps the rest (one running
run per thread: a partial unique index; arrival order: ``position`` taken from
the locked thread row). A run's end (``finish``) locks the thread the same way
and hands it to the next pending run in the same transaction, so the queue
lives in PostgreSQL and no run is lost or doubled when processes come and go.

Run creation is recorded by the run row itself (like every gateway request is a
run, not an audit row); changes to threads, crons, cancels and deletes are
audited.

One module per job, all re-exported here so callers write ``actions.admit(...)``:

- ``base``: limits, the caller as an actor, ``Assistant``, lookups and the
  locked-thread steps the verbs share;
- ``threads``: threads and their state;
- ``runs``: admitting a run under a strategy, its events, its end, cancels;
- ``leases``: lease renewal, the sweep, runs past their timeout;
- ``crons``: crons and which are due.
"""
from __future__ import annotations

from .base import (
    CANCEL_CHANNEL,
    STRATEGIES,
    STREAM_MODES,
    Admission,
    Assistant,
    CallerActor,
    TooLarge,
    caller_actor,
    check_size,
    get_run,
    get_thread,
    notify_dispatch,
    parse_uuid,
)
from .crons import create_cron, delete_cron, due_crons, update_cron
from .leases import renew, sweep, timed_out
from .runs import (
    Finished,
    admit,
    cancel_run,
    delete_run,
    finish,
    save_partial,
    store_events,
    validate_strategy,
)
from .threads import copy_thread, create_thread, delete_thread, update_state, update_thread

__all__ = [
    "CANCEL_CHANNEL", "STRATEGIES", "STREAM_MODES", "Admission", "Assistant", "CallerActor",
    "Finished", "TooLarge", "admit", "caller_actor", "cancel_run", "check_size", "copy_thread",
    "create_cron", "create_thread", "delete_cron", "delete_run", "delete_thread", "due_crons",
    "finish", "get_run", "get_thread", "notify_dispatch", "parse_uuid", "renew", "save_partial",
    "store_events", "sweep", "timed_out", "update_cron", "update_state", "update_thread",
    "validate_strategy",
]

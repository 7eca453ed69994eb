"""Side effects after commit that must never fail the write that caused them.

Redis is broker and channel layer only: every state change is committed to
PostgreSQL first, then a task is enqueued (a reconcile, a teardown, a budget
evaluation) and a live event is published. When Redis is down, that hand-off
fails *after* the commit — the change is made, the caller must hear its normal
answer, and the beat sweep (which re-reconciles every deployment that has
anything to keep, and collects orphans) repairs what the lost message would have
done once Redis is back. So the hand-off is logged and counted, never raised.

The counts are per process and shown by ``/healthz`` (``side_effects``), so an
operator sees "enqueue failed: 12" on a web process while Redis is out.
"""
from __future__ import annotations

import logging
import threading
from collections import Counter

from celery import current_app
from django.db import transaction
from kombu.exceptions import OperationalError as BrokerError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger(__name__)

# What a broker or channel layer raises when it cannot be reached (kombu wraps
# redis-py's connection errors in its OperationalError; the rest are sockets).
UNREACHABLE = (BrokerError, RedisConnectionError, RedisTimeoutError, OSError)

_counts: Counter = Counter()
_lock = threading.Lock()


def failed(kind: str, what: str, exc: BaseException) -> None:
    """Record that side effect ``kind`` ("enqueue", "publish") of ``what`` was
    lost: one warning line, one count."""
    with _lock:
        _counts[kind] += 1
        total = _counts[kind]
    repair = ("the periodic sweep repairs it" if kind == "enqueue"
              else "live pages re-sync when they reconnect")
    log.warning("%s failed after commit (%s): %s: %s; %s (%d lost in this process)",
                kind, what, type(exc).__name__, exc, repair, total)


def counts() -> dict[str, int]:
    """Side effects lost in this process since it started, by kind."""
    with _lock:
        return {"enqueue_failed": _counts["enqueue"], "publish_failed": _counts["publish"]}


def enqueue(task, *args, **options) -> None:
    """``task.delay(*args)`` (``apply_async`` with ``options``) now; a broker
    that cannot be reached is logged and counted instead of raised.

    ``task`` is a Celery task or its registered name (``"deployments.tasks.reconcile"``).
    Verbs name their tasks: the tasks call the control loop, which calls the
    verbs, so a verb importing its task would close an import cycle.
    """
    if isinstance(task, str):
        task = current_app.tasks[task]
    try:
        if options:
            task.apply_async(args, **options)
        else:
            task.delay(*args)
    except UNREACHABLE as exc:
        failed("enqueue", f"{task.name}{args!r}", exc)


def enqueue_on_commit(task, *args, **options) -> None:
    """Enqueue ``task`` once the current transaction commits (see :func:`enqueue`)."""
    transaction.on_commit(lambda: enqueue(task, *args, **options))

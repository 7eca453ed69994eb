"""What the thread verbs share: limits, the caller as an actor, an assistant,
lookups and the steps several verbs take with the thread row locked (a
checkpoint, starting the next pending run, telling processes to stop runs)."""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection

from deployments.audit import Actor
from deployments.errors import DomainError, NotFound

from ..models import Checkpoint, RunStatus, Strategy, Thread, ThreadRun

CANCEL_CHANNEL = "hangar_threads_cancel"
STRATEGIES = {s.value for s in Strategy}
STREAM_MODES = {"values", "updates", "events", "messages", "messages-tuple", "custom", "debug",
                "tasks", "checkpoints", "tools", "lifecycle"}


class TooLarge(DomainError):
    status = 413
    default_detail = "State too large."


@dataclass(frozen=True)
class CallerActor(Actor):
    """A gateway caller (a gateway key or an API token of the team)."""

    caller: str = ""

    @property
    def label(self) -> str:
        return f"gateway caller {self.caller}"[:150]


def caller_actor(ident: str, ip: str | None = None) -> Actor:
    return CallerActor(user=None, source="gateway", ip=ip, caller=ident)


@dataclass(frozen=True)
class Assistant:
    """A real-time deployment (agent × environment) seen as an assistant."""

    team_id: int
    team_slug: str
    agent_id: int
    agent_slug: str
    environment: str
    strategy: str  # the version's double-texting default
    timeout_s: float

    @property
    def assistant_id(self) -> str:
        return f"{self.agent_slug}:{self.environment}"

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.team_slug, self.agent_slug, self.environment)


@dataclass
class Admission:
    run: ThreadRun
    start: bool  # this process starts it now
    stop: list[tuple[str, str]] = field(default_factory=list)  # (run id, owner) to cancel
    state: object = None  # the thread's state the run starts from (when it starts now)


# Helpers ---------------------------------------------------------------------------


def check_size(values, what: str = "state") -> None:
    size = len(json.dumps(values, default=str).encode())
    limit = settings.HANGAR_THREADS_MAX_STATE_BYTES
    if size > limit:
        raise TooLarge(f"{what} is {size} bytes; the limit is {limit} bytes "
                       "(HANGAR_THREADS_MAX_STATE_BYTES)")


def parse_uuid(value, what: str = "thread") -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except (ValueError, TypeError, AttributeError):
        raise NotFound(f"no {what} {value}") from None


def get_thread(team_id: int, thread_id, *, lock: bool = False) -> Thread:
    query = Thread.objects.filter(team_id=team_id, pk=parse_uuid(thread_id))
    if lock:
        query = query.select_for_update(of=("self",))
    found = query.first()
    if found is None:
        raise NotFound(f"no thread {thread_id}")
    return found


def get_run(team_id: int, run_id, thread_id=None) -> ThreadRun:
    query = ThreadRun.objects.filter(team_id=team_id, pk=parse_uuid(run_id, "run"))
    if thread_id is not None:
        query = query.filter(thread_id=parse_uuid(thread_id))
    found = query.first()
    if found is None:
        raise NotFound(f"no run {run_id}")
    return found


def notify_dispatch() -> None:
    """Wake the gateway processes' sweeps: runs are pending for them to start."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, 'dispatch')", [CANCEL_CHANNEL])


def _notify_stop(stop: list[tuple[str, str]]) -> None:
    """Tell the processes running these runs to close them at the agent (on commit:
    PostgreSQL delivers NOTIFY when the transaction commits)."""
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        for run_id, owner in stop:
            if owner:
                cursor.execute("SELECT pg_notify(%s, %s)", [CANCEL_CHANNEL, f"{owner} {run_id}"])


def _checkpoint(thread: Thread, values, source: str, run: ThreadRun | None = None) -> Checkpoint:
    thread.checkpoints_made += 1
    return Checkpoint.objects.create(thread=thread, number=thread.checkpoints_made, run=run,
                                     source=source, values=values)


def _start_next(thread: Thread, owner: str, now: datetime) -> ThreadRun | None:
    """The thread's first pending run, made running by ``owner`` (thread locked)."""
    nxt = (ThreadRun.objects.filter(thread=thread, status=RunStatus.PENDING)
           .order_by("position").first())
    if nxt is None:
        return None
    lease = now + timedelta(seconds=settings.HANGAR_THREADS_LEASE_S)
    ThreadRun.objects.filter(pk=nxt.pk).update(status=RunStatus.RUNNING, owner=owner,
                                               lease_until=lease, started_at=now, updated_at=now)
    nxt.status, nxt.owner, nxt.lease_until, nxt.started_at = RunStatus.RUNNING, owner, lease, now
    return nxt

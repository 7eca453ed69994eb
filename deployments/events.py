"""Live events: typed payloads, group names from one helper, one publisher.

Events are *hints*: each names what changed (a deployment's health, its
instances, its timeline, a run, a cost tick) and browsers re-fetch the
server-rendered partial. So the publisher coalesces: per (event, object) it
sends at most one message per ``COALESCE_WINDOW_S`` and always sends the last
one (trailing edge), however fast the workers publish. Sends happen after
commit and never block the caller on Redis.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

from asgiref.sync import async_to_sync
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.db import transaction

log = logging.getLogger(__name__)

COALESCE_WINDOW_S = 0.25

# Event name -> the payload keys it must carry.
EVENTS: dict[str, frozenset[str]] = {
    "deployment.health": frozenset({"health", "reason", "replicas"}),
    "deployment.changed": frozenset(),
    "instances": frozenset(),
    "sample": frozenset(),
    "timeline": frozenset({"reason", "message"}),
    "run.finished": frozenset({"run_id"}),
    "cost.tick": frozenset(),
    "budget.triggered": frozenset({"budget_id", "budget_event_id", "percent", "action"}),
    "budget.reverted": frozenset({"budget_id", "budget_event_id", "restored"}),
    "refresh": frozenset(),
}


def team_group(team_id: int) -> str:
    return f"team.{int(team_id):x}"


def deployment_group(deployment_id: int) -> str:
    return f"deployment.{int(deployment_id):x}"


def publish(team_id: int, event: str, payload: dict, *, deployment_id: int | None = None) -> None:
    """Send ``event`` to the team's groups after the current transaction commits."""
    required = EVENTS.get(event)
    if required is None:
        raise ValueError(f"unknown live event {event!r}")
    missing = required - set(payload)
    if missing:
        raise ValueError(f"event {event!r} is missing {', '.join(sorted(missing))}")
    message = {"type": "hangar.event", "event": event, "team_id": team_id,
               "deployment_id": deployment_id, "payload": payload}
    groups = [team_group(team_id)]
    if deployment_id is not None:
        groups.append(deployment_group(deployment_id))
    key = (event, deployment_id if deployment_id is not None else f"team{team_id}")

    def deliver() -> None:
        if isinstance(get_channel_layer(), InMemoryChannelLayer):
            _send(groups, message)  # in-process layer (tests, standalone): no hop to save
        else:
            _coalescer.submit(key, lambda: _send(groups, message))

    transaction.on_commit(deliver)


# Sending -----------------------------------------------------------------------------


class _Sender:
    """One event loop thread per process for the Redis layer: a publish is a
    non-blocking hand-off, and the process keeps one Redis connection."""

    def __init__(self):
        self.loop: asyncio.AbstractEventLoop | None = None
        self.lock = threading.Lock()

    def _start(self) -> asyncio.AbstractEventLoop:
        with self.lock:
            if self.loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="hangar-events",
                                 daemon=True).start()
                self.loop = loop
        return self.loop

    def submit(self, coroutine_factory: Callable) -> None:
        future = asyncio.run_coroutine_threadsafe(coroutine_factory(), self._start())
        future.add_done_callback(_log_failure)


def _log_failure(future) -> None:
    if future.exception() is not None:
        log.warning("live event not sent: %s", future.exception())


_sender = _Sender()


def _send(groups: list[str], message: dict) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    if isinstance(layer, InMemoryChannelLayer):
        # Same process as the consumers: deliver on the server's own loop.
        for group in groups:
            async_to_sync(layer.group_send)(group, message)
        return

    async def send_all():
        for group in groups:
            await layer.group_send(group, message)

    _sender.submit(send_all)


class _Coalescer:
    """Leading- and trailing-edge throttle per key."""

    def __init__(self, window: float):
        self.window = window
        self.last: dict = {}
        self.pending: dict = {}
        self.lock = threading.Lock()
        self.timer: threading.Timer | None = None

    def submit(self, key, send: Callable[[], None]) -> None:
        now = time.monotonic()
        with self.lock:
            if key not in self.pending and now - self.last.get(key, 0.0) >= self.window:
                self.last[key] = now
                immediate = True
            else:
                self.pending[key] = send
                immediate = False
                self._schedule(now)
        if immediate:
            send()

    def _schedule(self, now: float) -> None:
        if self.timer is not None:
            return
        due = min(self.last.get(k, 0.0) + self.window for k in self.pending)
        self.timer = threading.Timer(max(0.0, due - now), self._flush)
        self.timer.daemon = True
        self.timer.start()

    def _flush(self) -> None:
        now = time.monotonic()
        with self.lock:
            self.timer = None
            due = [k for k in self.pending if now - self.last.get(k, 0.0) >= self.window]
            sends = [self.pending.pop(k) for k in due]
            for k in due:
                self.last[k] = now
            if self.pending:
                self._schedule(now)
        for send in sends:
            send()


_coalescer = _Coalescer(COALESCE_WINDOW_S)

"""Live events: one dataclass per event, group names from one helper, one publisher.

Events are *hints*: each names what changed (a deployment's health, its
instances, its timeline, a run, a cost tick) and browsers re-fetch the
server-rendered partial. Every event is a frozen dataclass below, registered
by its ``name``; its fields are the payload, and their types are checked when
the event is made, so an unknown event, a missing or extra field, or a value
of the wrong type fails where it is published, not in a browser.

Events go to the group of their team (``team_group``): each web process's hub
joins the groups of the teams its sockets can read, and filters by deployment
on the page. The publisher coalesces: per (event, object) it sends at most one
message per ``COALESCE_WINDOW_S`` and always sends the last one (trailing
edge), however fast the workers publish. Sends happen after commit and never
block the caller on Redis.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
import types
import typing
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, ClassVar

from asgiref.sync import async_to_sync
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.db import transaction

from . import effects

log = logging.getLogger(__name__)

COALESCE_WINDOW_S = 0.25


# The events ----------------------------------------------------------------------------

EVENTS: dict[str, type[LiveEvent]] = {}


@dataclass(frozen=True)
class LiveEvent:
    """Base of every live event: ``name`` on the wire, the fields as payload."""

    name: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.name in EVENTS:
            raise TypeError(f"live event {cls.name!r} is declared twice")
        EVENTS[cls.name] = cls

    def __post_init__(self) -> None:
        for name, hint in _hints(type(self)).items():
            value = getattr(self, name)
            if not _conforms(value, hint):
                raise TypeError(f"live event {self.name!r}: {name}={value!r} is not {hint}")

    @property
    def payload(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_payload(cls, name: str, payload: dict[str, Any]) -> LiveEvent:
        """The event called ``name`` with ``payload`` as its fields."""
        event_type = EVENTS.get(name)
        if event_type is None:
            raise ValueError(f"unknown live event {name!r}")
        fields = {f.name: f for f in dataclasses.fields(event_type)}
        extra = set(payload) - set(fields)
        if extra:
            raise ValueError(f"event {name!r} has no field {', '.join(sorted(extra))}")
        missing = [n for n, f in fields.items() if n not in payload
                   and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        if missing:
            raise ValueError(f"event {name!r} is missing {', '.join(sorted(missing))}")
        try:
            return event_type(**payload)
        except TypeError as exc:
            raise ValueError(str(exc)) from None


@dataclass(frozen=True)
class DeploymentHealth(LiveEvent):
    """The deployment's health roll-up changed (status card, fleet row)."""

    name: ClassVar[str] = "deployment.health"
    health: str
    reason: str
    replicas: int


@dataclass(frozen=True)
class DeploymentChanged(LiveEvent):
    """Its desired state changed (a verb: scale, pause, new version…) or a
    reconcile pass finished."""

    name: ClassVar[str] = "deployment.changed"
    replicas: int
    state: str


@dataclass(frozen=True)
class Instances(LiveEvent):
    """What its instance table shows changed."""

    name: ClassVar[str] = "instances"


@dataclass(frozen=True)
class Sample(LiveEvent):
    """A chart sample was written (replicas, CPU, memory, in-flight requests)."""

    name: ClassVar[str] = "sample"


@dataclass(frozen=True)
class Timeline(LiveEvent):
    """An entry was added to its timeline."""

    name: ClassVar[str] = "timeline"
    reason: str
    message: str
    type: str = "Normal"
    instance: str = ""

    @classmethod
    def of(cls, entry) -> Timeline:
        """The event for a ``DeploymentEvent`` row."""
        return cls(reason=entry.reason, message=entry.message, type=entry.type,
                   instance=entry.instance)


@dataclass(frozen=True)
class RunFinished(LiveEvent):
    """A run (a root span) of the deployment finished."""

    name: ClassVar[str] = "run.finished"
    run_id: int
    status: str


@dataclass(frozen=True)
class CostTick(LiveEvent):
    """Compute cost was accrued for the deployment."""

    name: ClassVar[str] = "cost.tick"
    deployment_id: int
    compute_usd: str  # a decimal, as text


@dataclass(frozen=True)
class BudgetTriggered(LiveEvent):
    """A budget threshold fired (cost panels carry the banner)."""

    name: ClassVar[str] = "budget.triggered"
    budget_id: int
    budget_event_id: int
    percent: int
    action: str


@dataclass(frozen=True)
class BudgetReverted(LiveEvent):
    """What a budget threshold did was reverted."""

    name: ClassVar[str] = "budget.reverted"
    budget_id: int
    budget_event_id: int
    restored: list[int]


@dataclass(frozen=True)
class DeadLetters(LiveEvent):
    """A stream deployment's dead letters were replayed or purged (its stream panel)."""

    name: ClassVar[str] = "deadletters"
    count: int


@dataclass(frozen=True)
class ScheduleChanged(LiveEvent):
    """A batch schedule was created, changed, suspended, resumed, deleted or fired."""

    name: ClassVar[str] = "schedule.changed"
    deployment: int
    schedule: int


@dataclass(frozen=True)
class JobRunChanged(LiveEvent):
    """A job run was created or changed status (pending, running, finished)."""

    name: ClassVar[str] = "job_run.changed"
    deployment: int
    schedule: int
    run: int
    status: str


_hint_cache: dict[type, dict[str, Any]] = {}


def _hints(event_type: type) -> dict[str, Any]:
    hints = _hint_cache.get(event_type)
    if hints is None:
        resolved = typing.get_type_hints(event_type)
        hints = _hint_cache[event_type] = {f.name: resolved[f.name]
                                           for f in dataclasses.fields(event_type)}
    return hints


def _conforms(value: Any, hint: Any) -> bool:
    """``value`` is of the (simple, JSON-shaped) type ``hint``."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, arg) for arg in typing.get_args(hint))
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_conforms(v, item) for v in value)
    if hint is type(None):
        return value is None
    if hint in (int, float) and isinstance(value, bool):
        return False
    if hint is float:
        return isinstance(value, int | float)
    return isinstance(value, hint)


# Groups and messages -------------------------------------------------------------------


def team_group(team_id: int) -> str:
    """The channel-layer group of a team's events (letters, digits and dots only)."""
    return f"team.{int(team_id):x}"


def message(team_id: int, event: LiveEvent, *, deployment_id: int | None = None) -> dict:
    """The channel-layer message for ``event`` (what the hub delivers)."""
    return {"type": "hangar.event", "event": event.name, "team_id": team_id,
            "deployment_id": deployment_id, "payload": event.payload}


# Publishing ----------------------------------------------------------------------------


def publish(team_id: int, event: LiveEvent | str, payload: dict | None = None, *,
            deployment_id: int | None = None) -> None:
    """Send ``event`` to the team's group once the current transaction commits
    (at once outside a transaction).

    ``event`` is an event object (``DeploymentHealth(health=…, …)``), or an
    event name with its ``payload`` as a dict, which is checked the same way."""
    if not isinstance(event, LiveEvent):
        event = LiveEvent.from_payload(event, payload or {})
    elif payload is not None:
        raise TypeError("an event object carries its own payload")
    group = team_group(team_id)
    body = message(team_id, event, deployment_id=deployment_id)
    key = (event.name, deployment_id if deployment_id is not None else f"team{team_id}")

    def deliver() -> None:
        if isinstance(get_channel_layer(), InMemoryChannelLayer):
            _send(group, body)  # in-process layer (tests, standalone): no hop to save
        else:
            _coalescer.submit(key, lambda: _send(group, body))

    if transaction.get_connection().in_atomic_block:
        transaction.on_commit(deliver)
    else:
        # Nothing to wait for; and ``on_commit`` would open a database
        # connection (not allowed on an event loop) only to find autocommit.
        deliver()


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
        effects.failed("publish", "live event", future.exception())


_sender = _Sender()
_in_flight: set[asyncio.Task] = set()


def _send(group: str, body: dict) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    if isinstance(layer, InMemoryChannelLayer):
        # Same process as the consumers: deliver on the server's own loop.
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            async_to_sync(layer.group_send)(group, body)
        else:
            task = loop.create_task(layer.group_send(group, body))
            _in_flight.add(task)
            task.add_done_callback(_in_flight.discard)
        return
    _sender.submit(lambda: layer.group_send(group, body))


class Coalescer:
    """Leading- and trailing-edge throttle per key: the first ``submit`` of a
    key sends at once, later ones within ``window`` seconds are folded into
    one send of the latest, at the end of the window.

    ``inline=False`` runs every send on the timer thread, the first one too
    (for sends that query the database: the caller may be an event loop)."""

    def __init__(self, window: float, *, inline: bool = True):
        self.window = window
        self.inline = inline
        self.last: dict[Hashable, float] = {}
        self.pending: dict[Hashable, Callable[[], None]] = {}
        self.lock = threading.Lock()
        self.timer: threading.Timer | None = None

    def submit(self, key: Hashable, send: Callable[[], None]) -> None:
        now = time.monotonic()
        with self.lock:
            if self.inline and key not in self.pending and \
                    now - self.last.get(key, -self.window) >= self.window:
                self.last[key] = now
                immediate = True
            else:
                self.pending[key] = send
                immediate = False
                self._schedule(now)
        if immediate:
            _run(send)

    def _schedule(self, now: float) -> None:
        if self.timer is not None:
            return
        due = min(self.last.get(k, -self.window) + self.window for k in self.pending)
        self.timer = threading.Timer(max(0.0, due - now), self._flush)
        self.timer.daemon = True
        self.timer.start()

    def _flush(self) -> None:
        now = time.monotonic()
        with self.lock:
            self.timer = None
            due = [k for k in self.pending if now - self.last.get(k, -self.window) >= self.window]
            sends = [self.pending.pop(k) for k in due]
            for k in due:
                self.last[k] = now
            if self.pending:
                self._schedule(now)
        for send in sends:
            _run(send)


def _run(send: Callable[[], None]) -> None:
    try:
        send()
    except Exception:  # noqa: BLE001 - live events are best effort
        log.warning("live event not sent", exc_info=True)


_coalescer = Coalescer(COALESCE_WINDOW_S)

"""Per-process fan-out of live events to websockets.

One web process holds many sockets; giving each its own channel-layer channel
costs, per event and per socket, a queue hop, a dispatch and (in Channels 4.3)
a thread hop to close stale database connections. The hub instead owns one
channel per process: it joins the group of every team some socket can read,
encodes each event once, and offers the text to the bounded outbox of every
socket whose user can read that team. Each socket drains its outbox in its own
writer task, so a slow browser delays nobody else; one that falls
``OUTBOX_SIZE`` messages behind is closed (1013, "try again later") and its
page reconnects and re-fetches what it missed, rather than the server
buffering without bound.

Access is re-checked for every message against the readable teams of each
socket's user, refreshed for all sockets at once every ``ACCESS_TTL_S`` seconds
off the delivery path (one query for every user). A user who lost a team stops
receiving its events; a user who was deactivated or deleted has the socket
closed with 4403.

The channel layer (Redis) can go away while sockets stay open: the layer then
keeps reconnecting by itself, and whatever is published meanwhile is lost. So
the hub sends itself a numbered heartbeat every ``HEARTBEAT_S`` through the
layer. A heartbeat that cannot be sent, or none echoed for ``STALE_S``, means
live updates are interrupted: every socket is told (``live.interrupted``, the
page says "Reconnecting…"). The first echo after that proves the subscription
is back; the hub joins its teams' groups again (a join that failed meanwhile is
redone) and tells every socket to re-sync (``live.resumed``: the page re-fetches
its partials and says "Live"). A heartbeat that was sent but never echoed (a
gap in the numbers: the subscriber reconnected while Redis was already back)
means events may have been lost too, and also answers ``live.resumed``. Events
themselves take the same path as before: no per-message work was added.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import weakref
from typing import Protocol

from channels.db import database_sync_to_async
from channels.exceptions import ChannelFull
from channels.layers import get_channel_layer

from . import access
from .effects import UNREACHABLE
from .events import team_group

log = logging.getLogger(__name__)

ACCESS_TTL_S = 5.0
OUTBOX_SIZE = 256
CLOSE_REVOKED = 4403
CLOSE_TOO_SLOW = 1013
HEARTBEAT_S = 0.5
STALE_S = 5.0
HEARTBEAT = "hangar.heartbeat"
PROBE = "hangar.hub.probe"  # nobody listens
# Control messages to the page, shaped like events (see ``encode``).
INTERRUPTED = '{"event":"live.interrupted","deployment_id":null,"payload":{}}'
RESUMED = '{"event":"live.resumed","deployment_id":null,"payload":{}}'


class Subscriber(Protocol):
    user_pk: int
    team_ids: frozenset[int]

    def offer(self, text: str) -> None: ...

    def revoke(self, code: int) -> None: ...


def encode(message: dict) -> str:
    return json.dumps({k: message[k] for k in ("event", "deployment_id", "payload")},
                      separators=(",", ":"))


class Hub:
    def __init__(self, layer):
        self.layer = layer
        self.channel: str | None = None
        self.subscribers: set[Subscriber] = set()
        self.by_team: dict[int, set[Subscriber]] = {}
        self.lock = asyncio.Lock()
        self.tasks: list[asyncio.Task] = []
        self.interrupted = False
        self.sent = 0  # the last heartbeat the layer took
        self.heard = 0  # the last heartbeat echoed back
        self.heard_at = 0.0
        self.resuming: asyncio.Task | None = None

    # Membership ----------------------------------------------------------------------------

    async def join(self, subscriber: Subscriber) -> None:
        """Add a socket. With the layer down it joins all the same, is told that
        live updates are interrupted, and is told to re-sync once they resume."""
        async with self.lock:
            if not self.tasks:
                self.tasks = [asyncio.create_task(self._watch_loop()),
                              asyncio.create_task(self._access_loop())]
            if self.channel is None and not self.interrupted:  # else the heartbeat opens it
                await self._open()
            await self._index(subscriber, subscriber.team_ids, frozenset())
            self.subscribers.add(subscriber)
            if self.interrupted:
                subscriber.offer(INTERRUPTED)

    async def leave(self, subscriber: Subscriber) -> None:
        async with self.lock:
            try:
                self.subscribers.discard(subscriber)
                await self._index(subscriber, frozenset(), subscriber.team_ids)
            finally:
                if not self.subscribers and self.tasks:
                    await self._stop()

    async def _open(self) -> None:
        """Open the hub's channel (under the lock); the layer down interrupts."""
        try:
            channel = await self.layer.new_channel("hangar.hub.")
        except UNREACHABLE as exc:
            self._interrupt(exc)
            return
        self.channel = channel
        self.sent = self.heard = 0
        self.heard_at = asyncio.get_running_loop().time()
        self.tasks.append(asyncio.create_task(self._receive_loop(channel)))

    async def _index(self, subscriber, added, removed) -> None:
        """Move ``subscriber`` between teams; join a team's group with its first
        socket and leave it with its last. The index changes before the awaits
        so that a failing layer call leaves no socket behind; the layer down
        interrupts live updates, and resuming joins every group again."""
        gone, new = [], []
        for team_id in removed:
            members = self.by_team.get(team_id)
            if members is not None:
                members.discard(subscriber)
                if not members:
                    del self.by_team[team_id]
                    gone.append(team_id)
        for team_id in added:
            members = self.by_team.setdefault(team_id, set())
            if not members:
                new.append(team_id)
            members.add(subscriber)
        if self.channel is None:
            return
        try:
            for team_id in gone:
                await self.layer.group_discard(team_group(team_id), self.channel)
            for team_id in new:
                await self.layer.group_add(team_group(team_id), self.channel)
        except UNREACHABLE as exc:
            self._interrupt(exc)

    async def _stop(self) -> None:
        tasks = [*self.tasks, *([self.resuming] if self.resuming else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.tasks = []
        self.resuming = None
        self.channel = None
        self.by_team = {}
        self.interrupted = False

    def _broadcast(self, text: str) -> None:
        for subscriber in tuple(self.subscribers):
            subscriber.offer(text)

    # Delivery ------------------------------------------------------------------------------

    def dispatch(self, message: dict) -> int:
        """Offer ``message`` to every socket whose user can read its team."""
        members = self.by_team.get(message.get("team_id"))
        if not members:
            return 0
        text = encode(message)
        for subscriber in tuple(members):
            subscriber.offer(text)
        return len(members)

    async def _receive_loop(self, channel: str) -> None:
        # The Redis layer reconnects and re-subscribes by itself after a
        # restart; receive() only waits meanwhile (the heartbeat notices).
        while True:
            message = await self.layer.receive(channel)
            if message.get("type") != "hangar.event":
                if message.get("type") == HEARTBEAT:
                    self._heard(message["n"])
                continue
            try:
                self.dispatch(message)
            except Exception:  # one malformed event must not end live updates
                log.exception("live events: cannot deliver %r", message.get("event"))

    # Heartbeat -----------------------------------------------------------------------------

    async def _watch_loop(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            try:
                await self.beat()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("live events: heartbeat failed", exc_info=True)

    async def beat(self) -> None:
        """Send the next heartbeat (opening the channel first if the layer was
        down when the hub started); interrupt if it cannot go or none came back."""
        if self.channel is None:
            # Probe with a plain publish first: a channel that fails to open is
            # left behind by the Redis layer, a publish leaves nothing.
            try:
                await asyncio.wait_for(self.layer.send(PROBE, {"type": HEARTBEAT, "n": 0}),
                                       STALE_S)
            except UNREACHABLE:
                return
            except ChannelFull:  # in memory: nobody drains it, yet the layer answered
                pass
            async with self.lock:
                if self.channel is None:
                    await self._open()
            if self.channel is None:
                return
        try:  # a send that hangs (no answer, no refusal) counts as down too
            await asyncio.wait_for(
                self.layer.send(self.channel, {"type": HEARTBEAT, "n": self.sent + 1}), STALE_S)
        except UNREACHABLE as exc:  # TimeoutError is an OSError
            self._interrupt(exc)
            return
        except ChannelFull:  # the in-memory layer's queue is full: busy, not down
            return
        self.sent += 1
        silent = asyncio.get_running_loop().time() - self.heard_at
        if not self.interrupted and silent > STALE_S:
            self._interrupt(f"no heartbeat came back for {silent:.0f} s")

    def _heard(self, n: int) -> None:
        lost = n != self.heard + 1
        self.heard, self.heard_at = n, asyncio.get_running_loop().time()
        if (self.interrupted or lost) and self.resuming is None:
            self.resuming = asyncio.create_task(self._resume())

    def _interrupt(self, reason) -> None:
        if self.interrupted:
            return
        self.interrupted = True
        log.warning("live events: channel layer unreachable (%s); %d sockets told that "
                    "live updates are interrupted", reason, len(self.subscribers))
        self._broadcast(INTERRUPTED)

    async def _resume(self) -> None:
        """The layer answers again: join every group again, then every page re-syncs."""
        try:
            async with self.lock:
                if self.channel is None:
                    return
                try:
                    for team_id in tuple(self.by_team):
                        await self.layer.group_add(team_group(team_id), self.channel)
                except UNREACHABLE as exc:
                    self._interrupt(exc)
                    return
                if self.interrupted:
                    log.warning("live events: channel layer back; %d sockets re-sync",
                                len(self.subscribers))
                self.interrupted = False
                self._broadcast(RESUMED)
        finally:
            self.resuming = None

    # Access --------------------------------------------------------------------------------

    async def _access_loop(self) -> None:
        while True:
            await asyncio.sleep(ACCESS_TTL_S)
            try:
                await self.refresh_access()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("live events: access refresh failed", exc_info=True)

    async def refresh_access(self) -> None:
        """Re-read every socket's readable teams in one query; close the sockets
        of users who were deactivated or deleted (their ``leave`` follows).
        Group memberships are renewed too (the in-memory layer expires them)."""
        subscribers = tuple(self.subscribers)
        if not subscribers:
            return
        readable = await database_sync_to_async(access.readable_team_ids)(
            {s.user_pk for s in subscribers})
        async with self.lock:
            for subscriber in subscribers:
                if subscriber not in self.subscribers:
                    continue
                now = readable.get(subscriber.user_pk)
                before = subscriber.team_ids
                if now is None:
                    self.subscribers.discard(subscriber)
                    await self._index(subscriber, frozenset(), before)
                    subscriber.revoke(CLOSE_REVOKED)
                    continue
                now = frozenset(now)
                if now != before:
                    subscriber.team_ids = now
                    await self._index(subscriber, now - before, before - now)
            if self.channel is not None and not self.interrupted:
                try:
                    for team_id in self.by_team:
                        await self.layer.group_add(team_group(team_id), self.channel)
                except UNREACHABLE as exc:
                    self._interrupt(exc)


_hubs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def hub() -> Hub:
    """The hub of the running event loop (one per web process)."""
    loop = asyncio.get_running_loop()
    current = _hubs.get(loop)
    if current is None:
        current = _hubs[loop] = Hub(get_channel_layer())
    return current

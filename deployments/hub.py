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
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import weakref
from typing import Protocol

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer

from . import access
from .events import team_group

log = logging.getLogger(__name__)

ACCESS_TTL_S = 5.0
OUTBOX_SIZE = 256
CLOSE_REVOKED = 4403
CLOSE_TOO_SLOW = 1013


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

    # Membership ----------------------------------------------------------------------------

    async def join(self, subscriber: Subscriber) -> None:
        async with self.lock:
            if self.channel is None:
                self.channel = await self.layer.new_channel("hangar.hub.")
                self.tasks = [asyncio.create_task(self._receive_loop()),
                              asyncio.create_task(self._access_loop())]
            await self._index(subscriber, subscriber.team_ids, frozenset())
            self.subscribers.add(subscriber)

    async def leave(self, subscriber: Subscriber) -> None:
        async with self.lock:
            try:
                self.subscribers.discard(subscriber)
                await self._index(subscriber, frozenset(), subscriber.team_ids)
            finally:
                if not self.subscribers and self.channel is not None:
                    await self._stop()

    async def _index(self, subscriber, added, removed) -> None:
        """Move ``subscriber`` between teams; join a team's group with its first
        socket and leave it with its last. The index changes before the awaits
        so that a failing layer call leaves no socket behind."""
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
        for team_id in gone:
            await self.layer.group_discard(team_group(team_id), self.channel)
        for team_id in new:
            await self.layer.group_add(team_group(team_id), self.channel)

    async def _stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.tasks = []
        self.channel = None
        self.by_team = {}

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

    async def _receive_loop(self) -> None:
        # The Redis layer reconnects and re-subscribes by itself after a
        # restart; receive() only waits meanwhile.
        while True:
            message = await self.layer.receive(self.channel)
            if message.get("type") != "hangar.event":
                continue
            try:
                self.dispatch(message)
            except Exception:  # one malformed event must not end live updates
                log.exception("live events: cannot deliver %r", message.get("event"))

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
            if self.channel is not None:
                for team_id in self.by_team:
                    await self.layer.group_add(team_group(team_id), self.channel)


_hubs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def hub() -> Hub:
    """The hub of the running event loop (one per web process)."""
    loop = asyncio.get_running_loop()
    current = _hubs.get(loop)
    if current is None:
        current = _hubs[loop] = Hub(get_channel_layer())
    return current

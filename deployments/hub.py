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
off the delivery path (one query for every user). A user who lost every team,
or was deactivated, has the socket closed with 4403.
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
                _hubs.setdefault(asyncio.get_running_loop(), self)
                self.tasks = [asyncio.create_task(self._receive_loop()),
                              asyncio.create_task(self._access_loop())]
            self.subscribers.add(subscriber)
            await self._index(subscriber, subscriber.team_ids, frozenset())

    async def leave(self, subscriber: Subscriber) -> None:
        async with self.lock:
            if subscriber in self.subscribers:
                self.subscribers.discard(subscriber)
                await self._index(subscriber, frozenset(), subscriber.team_ids)
            if not self.subscribers and self.channel is not None:
                await self._stop()

    async def _index(self, subscriber, added, removed) -> None:
        for team_id in removed:
            members = self.by_team.get(team_id)
            if members is None:
                continue
            members.discard(subscriber)
            if not members:
                del self.by_team[team_id]
                await self.layer.group_discard(team_group(team_id), self.channel)
        for team_id in added:
            members = self.by_team.get(team_id)
            if members is None:
                members = self.by_team[team_id] = set()
                await self.layer.group_add(team_group(team_id), self.channel)
            members.add(subscriber)

    async def _stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.tasks = []
        self.channel = None
        loop = asyncio.get_running_loop()
        if _hubs.get(loop) is self:
            del _hubs[loop]

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
        while True:
            try:
                message = await self.layer.receive(self.channel)
            except asyncio.CancelledError:
                raise
            except Exception:  # Redis restarting: the layer reconnects, so do we
                log.warning("live events: channel layer receive failed; retrying", exc_info=True)
                await asyncio.sleep(1.0)
                continue
            if message.get("type") == "hangar.event":
                self.dispatch(message)

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
        of users who can read nothing any more (their ``leave`` follows)."""
        subscribers = tuple(self.subscribers)
        if not subscribers:
            return
        readable = await database_sync_to_async(access.readable_team_ids)(
            {s.user_pk for s in subscribers})
        async with self.lock:
            for subscriber in subscribers:
                if subscriber not in self.subscribers:
                    continue
                now = frozenset(readable.get(subscriber.user_pk, ()))
                before = subscriber.team_ids
                if not now:
                    self.subscribers.discard(subscriber)
                    await self._index(subscriber, frozenset(), before)
                    subscriber.revoke(CLOSE_REVOKED)
                    continue
                if now != before:
                    subscriber.team_ids = now
                    await self._index(subscriber, now - before, before - now)


_hubs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def hub() -> Hub:
    """The hub of the running event loop (one per web process)."""
    loop = asyncio.get_running_loop()
    current = _hubs.get(loop)
    if current is None:
        current = _hubs[loop] = Hub(get_channel_layer())
    return current

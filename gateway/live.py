"""Keeping the endpoint table current, off the request path.

The table is read whole from the database at start, then again whenever a live
event of a served team says its instances or a deployment changed (the channel
layer: Redis pub/sub between processes), coalesced to one read at a time, and
every ``REFRESH_S`` whatever happens (a missed pub/sub message, a new team, the
standalone shape whose in-memory layer does not reach this process).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging

from channels.db import database_sync_to_async
from channels.layers import InMemoryChannelLayer, get_channel_layer

from deployments.events import team_group

from . import conf
from .routes import Table, load

log = logging.getLogger(__name__)
RELOADING_EVENTS = {"instances", "deployment.changed", "deployment.health", "rollout.changed"}


class Loader:
    def __init__(self, table: Table):
        self.table = table
        self.loaded = False
        self.wanted = asyncio.Event()
        self.tasks: list[asyncio.Task] = []
        self.layer = None
        self.channel = ""
        self.groups: set[str] = set()
        # Callers of ``fresh`` waiting for the next read (one future for all of them).
        self.next_read: asyncio.Future | None = None

    async def start(self) -> None:
        await self.reload()  # serve nothing before the first read
        loop = asyncio.get_running_loop()
        self.tasks.append(loop.create_task(self._reloads(), name="gateway-reloads"))
        self.tasks.append(loop.create_task(self._ticks(), name="gateway-ticks"))
        layer = get_channel_layer()
        if layer is not None and not isinstance(layer, InMemoryChannelLayer):
            self.layer = layer
            self.channel = await layer.new_channel("gateway.")
            await self._join()
            self.tasks.append(loop.create_task(self._events(), name="gateway-events"))

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.tasks.clear()

    async def reload(self) -> None:
        rows = await database_sync_to_async(load)()
        self.table.replace(rows)
        self.loaded = True
        if self.layer is not None:
            await self._join()

    async def _join(self) -> None:
        for team_id in self.table.team_ids:
            group = team_group(team_id)
            if group not in self.groups:
                await self.layer.group_add(group, self.channel)
                self.groups.add(group)

    async def fresh(self, timeout_s: float = 5.0) -> None:
        """Until the table has been read again after this call (coalesced with
        every other caller and with the reloads already wanted). For a request
        the table cannot serve yet: a deployment of a team this process has not
        heard of, or whose first replica became ready a moment ago."""
        if self.next_read is None or self.next_read.done():
            self.next_read = asyncio.get_running_loop().create_future()
        waiting = self.next_read
        self.wanted.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(waiting), timeout_s)

    async def _reloads(self) -> None:
        while True:
            await self.wanted.wait()
            self.wanted.clear()
            # The callers of ``fresh`` so far are answered by this read, not one
            # already under way when they asked.
            waiting, self.next_read = self.next_read, None
            try:
                await self.reload()
            except Exception:  # noqa: BLE001 - keep serving the table we have
                log.warning("gateway: endpoint reload failed; serving the last table",
                            exc_info=True)
                await asyncio.sleep(1)
                self.wanted.set()
            finally:
                if waiting is not None and not waiting.done():
                    waiting.set_result(None)

    async def _ticks(self) -> None:
        while True:
            await asyncio.sleep(conf.REFRESH_S)
            self.wanted.set()

    async def _events(self) -> None:
        while True:
            try:
                message = await self.layer.receive(self.channel)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - Redis away: the ticks keep the table fresh
                await asyncio.sleep(1)
                continue
            if message.get("event") in RELOADING_EVENTS:
                self.wanted.set()

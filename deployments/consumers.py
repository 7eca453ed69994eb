"""Websocket consumer: transport only. Authenticates in connect, then hands the
socket to the process's :mod:`hub`, which delivers the events of the teams the
user can read (re-checked for every message) into the socket's bounded outbox;
a writer task sends them in order."""
from __future__ import annotations

import asyncio
import contextlib
import json

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from . import access
from .hub import CLOSE_REVOKED, CLOSE_TOO_SLOW, OUTBOX_SIZE, hub

PONG = '{"event":"pong","deployment_id":null,"payload":{}}'


class EventsConsumer(AsyncWebsocketConsumer):
    # No channel per socket: events arrive through the hub's single channel.
    channel_layer_alias = None

    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            # Accept, then close: a close before the handshake reaches the
            # browser as a failed handshake (1006) and the page would retry.
            await self.accept()
            await self.close(code=4401)
            return
        self.user_pk = user.pk
        readable = await database_sync_to_async(access.readable_team_ids)([user.pk])
        if readable[user.pk] is None:  # deactivated meanwhile
            await self.accept()
            await self.close(code=CLOSE_REVOKED)
            return
        self.team_ids = frozenset(readable[user.pk])
        self.outbox: asyncio.Queue = asyncio.Queue(maxsize=OUTBOX_SIZE)
        self.closing = False
        self.hub = hub()
        try:
            await self.hub.join(self)  # events offered meanwhile wait in the outbox
            await self.accept()
        except BaseException:
            await self.hub.leave(self)
            raise
        self.writer = asyncio.create_task(self._write())

    async def disconnect(self, code):
        try:
            if getattr(self, "hub", None) is not None:
                await self.hub.leave(self)
        finally:
            writer = getattr(self, "writer", None)
            if writer is not None and not writer.done():
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await writer

    # Called by the hub, on the event loop, without awaiting.

    def offer(self, text: str) -> None:
        if self.closing:
            return
        try:
            self.outbox.put_nowait(text)
        except asyncio.QueueFull:
            self.revoke(CLOSE_TOO_SLOW)

    def revoke(self, code: int) -> None:
        """Close after nothing else: drop what is queued, then the close frame."""
        if self.closing:
            return
        self.closing = True
        while not self.outbox.empty():
            self.outbox.get_nowait()
        self.outbox.put_nowait(code)

    async def _write(self) -> None:
        try:
            while True:
                item = await self.outbox.get()
                if isinstance(item, int):
                    await self.close(code=item)
                    return
                await self.send(text_data=item)
        except (OSError, RuntimeError):  # the browser went away mid-send
            self.closing = True

    async def receive(self, text_data=None, bytes_data=None):
        try:
            content = json.loads(text_data or "")
        except ValueError:
            return
        if isinstance(content, dict) and content.get("type") == "ping":
            self.offer(PONG)

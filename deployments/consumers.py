"""Websocket consumer: transport only. Authenticates in connect, then hands the
socket to the process's :mod:`hub`, which delivers the events of the teams the
user can read (re-checked for every message) into the socket's bounded outbox;
a writer task sends them in order.

A socket carries thousands of messages per minute, so the path of one message
is kept short: the outbox is a deque with one waiter, and the writer hands each
text straight to the server's ``send`` — not through Channels' session wrapper,
which inspects the session on every message sent although a websocket never
saves it (``SocketAuthMiddlewareStack``)."""
from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque

from channels.auth import AuthMiddleware
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.sessions import CookieMiddleware, InstanceSessionWrapper

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
        self.outbox: deque[str | int] = deque()
        self.waiter: asyncio.Future | None = None
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
        if len(self.outbox) >= OUTBOX_SIZE:
            self.revoke(CLOSE_TOO_SLOW)
            return
        self.outbox.append(text)
        self._wake()

    def revoke(self, code: int) -> None:
        """Close after nothing else: drop what is queued, then the close frame."""
        if self.closing:
            return
        self.closing = True
        self.outbox.clear()
        self.outbox.append(code)
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _write(self) -> None:
        send = self.base_send  # the server's send (see SocketAuthMiddlewareStack)
        loop = asyncio.get_running_loop()
        try:
            while True:
                if not self.outbox:
                    self.waiter = loop.create_future()
                    await self.waiter
                    self.waiter = None
                    continue
                item = self.outbox.popleft()
                if isinstance(item, int):
                    await self.close(code=item)
                    return
                await send({"type": "websocket.send", "text": item})
        except (OSError, RuntimeError):  # the browser went away mid-send
            self.closing = True

    async def receive(self, text_data=None, bytes_data=None):
        try:
            content = json.loads(text_data or "")
        except ValueError:
            return
        if isinstance(content, dict) and content.get("type") == "ping":
            self.offer(PONG)


class _SocketSessionMiddleware:
    """Channels' ``SessionMiddleware`` without its ``send`` wrapper: the session
    is read when the socket connects (``scope["session"]``, for ``AuthMiddleware``)
    and, as a websocket never saves it, each message goes to the server as is."""

    def __init__(self, inner):
        self.inner = inner

    async def __call__(self, scope, receive, send):
        wrapper = InstanceSessionWrapper(scope, send)
        await wrapper.resolve_session()
        return await self.inner(wrapper.scope, receive, send)


def SocketAuthMiddlewareStack(inner):  # noqa: N802 - named like Channels' stacks
    """``AuthMiddlewareStack`` for websockets: session user in ``scope["user"]``."""
    return CookieMiddleware(_SocketSessionMiddleware(AuthMiddleware(inner)))

"""Websocket consumer: transport only. Authenticates in connect, joins the
groups of the teams the user can read, and re-checks access for every message
(against a short-lived cache, so a thousand sockets do not mean a thousand
queries per event)."""
from __future__ import annotations

import time

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from . import access
from .audit import Actor
from .events import team_group

ACCESS_TTL_S = 5.0


class EventsConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        self.team_ids = await self._readable_team_ids()
        self.checked_at = time.monotonic()
        for team_id in self.team_ids:
            await self.channel_layer.group_add(team_group(team_id), self.channel_name)
        await self.accept()
        if settings.STANDALONE or not settings.REDIS_URL:
            from .relay import ensure_relay

            ensure_relay()

    async def disconnect(self, code):
        for team_id in getattr(self, "team_ids", []):
            await self.channel_layer.group_discard(team_group(team_id), self.channel_name)

    async def hangar_event(self, message):
        if time.monotonic() - self.checked_at > ACCESS_TTL_S:
            self.team_ids = await self._readable_team_ids()
            self.checked_at = time.monotonic()
            if not self.team_ids:
                await self.close(code=4403)
                return
        if message["team_id"] in self.team_ids:
            await self.send_json({k: message[k] for k in ("event", "deployment_id", "payload")})

    async def receive_json(self, content, **kwargs):
        if content.get("type") == "ping":
            await self.send_json({"event": "pong", "deployment_id": None, "payload": {}})

    @database_sync_to_async
    def _readable_team_ids(self) -> set[int]:
        from django.contrib.auth import get_user_model

        from .models import Team

        user = get_user_model().objects.filter(pk=self.scope["user"].pk, is_active=True).first()
        if user is None:
            return set()
        actor = Actor(user=user, source="ui")
        return set(access.readable(actor, Team.objects.all()).values_list("pk", flat=True))

"""Websocket consumer: transport only. Authenticates in connect, joins the
groups of the teams the user can read, and re-checks access per message."""
from __future__ import annotations

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from . import access
from .audit import Actor
from .events import team_group


class EventsConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        self.team_ids = await self._readable_team_ids()
        for team_id in self.team_ids:
            await self.channel_layer.group_add(team_group(team_id), self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        for team_id in getattr(self, "team_ids", []):
            await self.channel_layer.group_discard(team_group(team_id), self.channel_name)

    async def hangar_event(self, message):
        if message["team_id"] in await self._readable_team_ids():
            await self.send_json({k: message[k] for k in ("event", "deployment_id", "payload")})

    @database_sync_to_async
    def _readable_team_ids(self) -> list[int]:
        from .models import Team

        actor = Actor(user=self.scope["user"], source="ui")
        return list(access.readable(actor, Team.objects.all()).values_list("pk", flat=True))

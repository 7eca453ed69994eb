"""The cron routes: create (on a thread or stateless), search, count, update,
delete."""
from __future__ import annotations

from django.utils.dateparse import parse_datetime

from deployments.errors import Invalid

from .. import actions
from ..asyncdb import db
from .http import route
from .reads import _thread_row, cron_json, cron_row, search_crons


class CronRoutes:
    """Routes of ``ThreadsServer``: crons."""

    @route("POST", "threads/{thread_id}/runs/crons")
    async def create_thread_cron(self, request, send):
        return await self._create_cron(request, request.params["thread_id"])

    @route("POST", "runs/crons")
    async def create_cron(self, request, send):
        return await self._create_cron(request, None)

    async def _create_cron(self, request, thread_id):
        body = request.json()
        assistant = await self.assistant(request, body.get("assistant_id"))
        end_time = body.get("end_time")
        if isinstance(end_time, str):
            end_time = parse_datetime(end_time) or end_time
        payload = {k: body[k] for k in ("input", "config", "context", "stream_mode")
                   if body.get(k) is not None}
        if body.get("metadata") is not None and not isinstance(body["metadata"], dict):
            raise Invalid({"metadata": ["Give an object."]})

        def make():
            thread = _thread_row(request.team_id, thread_id) if thread_id else None
            found = actions.create_cron(
                assistant, actor=self.actor(request), schedule=body.get("schedule"),
                tz=body.get("timezone") or "UTC", thread=thread, payload=payload,
                strategy=body.get("multitask_strategy"), metadata=body.get("metadata"),
                enabled=body.get("enabled", True), end_time=end_time)
            return cron_json(cron_row(request.team_id, found.pk))
        return 200, await db(make)()

    @route("POST", "runs/crons/search")
    async def search_crons(self, request, send):
        body = request.json()
        agent = None
        if body.get("assistant_id"):
            found = await self.assistant(request, body["assistant_id"])
            agent = (found.agent_id, found.environment)
        return 200, await db(search_crons)(request.team_id, body, agent)

    @route("POST", "runs/crons/count")
    async def count_crons(self, request, send):
        body = {**request.json(), "limit": 1000}
        return 200, len(await db(search_crons)(request.team_id, body, None))

    @route("PATCH", "runs/crons/{cron_id}")
    async def update_cron(self, request, send):
        body = request.json()
        if isinstance(body.get("end_time"), str):
            body["end_time"] = parse_datetime(body["end_time"]) or body["end_time"]
        changes = {k: body.get(k) for k in ("schedule", "timezone", "multitask_strategy",
                                            "enabled", "metadata") if k in body}
        if "end_time" in body:
            changes["end_time"] = body["end_time"]
        payload = {k: body[k] for k in ("input", "config", "context") if k in body}
        if payload:
            changes["payload"] = payload

        def change():
            found = cron_row(request.team_id, request.params["cron_id"])
            actions.update_cron(found, actor=self.actor(request), changes=changes)
            return cron_json(cron_row(request.team_id, found.pk))
        return 200, await db(change)()

    @route("DELETE", "runs/crons/{cron_id}")
    async def delete_cron(self, request, send):
        def remove():
            actions.delete_cron(cron_row(request.team_id, request.params["cron_id"]),
                                actor=self.actor(request))
        await db(remove)()
        return 204, None

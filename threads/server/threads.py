"""The thread routes: create, search, count, read, update, delete, copy, a
thread's state (at a checkpoint too) and its history."""
from __future__ import annotations

from deployments.errors import Invalid

from .. import actions
from ..asyncdb import db
from .http import route
from .reads import _page, _thread_row, search_threads, thread_history, thread_json, thread_state


class ThreadRoutes:
    """Routes of ``ThreadsServer``: threads and their state."""

    @route("POST", "threads")
    async def create_thread(self, request, send):
        body = request.json()
        ttl = body.get("ttl")
        if isinstance(ttl, dict):
            ttl = ttl.get("ttl")

        def make():
            thread = actions.create_thread(
                request.team_id, actor=self.actor(request), thread_id=body.get("thread_id"),
                metadata=body.get("metadata"), if_exists=body.get("if_exists") or "raise",
                ttl_minutes=ttl)
            return thread_json(_thread_row(request.team_id, thread.pk))
        return 200, await db(make)()

    @route("POST", "threads/search")
    async def search_threads(self, request, send):
        return 200, await db(search_threads)(request.team_id, request.json())

    @route("POST", "threads/count")
    async def count_threads(self, request, send):
        body = {**request.json(), "limit": 1000}
        return 200, len(await db(search_threads)(request.team_id, body))

    @route("GET", "threads/{thread_id}")
    async def get_thread(self, request, send):
        return 200, thread_json(await db(_thread_row)(request.team_id,
                                                      request.params["thread_id"]))

    @route("PATCH", "threads/{thread_id}")
    async def update_thread(self, request, send):
        body = request.json()
        ttl = body.get("ttl")
        if isinstance(ttl, dict):
            ttl = ttl.get("ttl")

        def change():
            thread = _thread_row(request.team_id, request.params["thread_id"])
            actions.update_thread(thread, actor=self.actor(request),
                                  metadata=body.get("metadata"), ttl_minutes=ttl)
            return thread_json(_thread_row(request.team_id, thread.pk))
        return 200, await db(change)()

    @route("DELETE", "threads/{thread_id}")
    async def delete_thread(self, request, send):
        def remove():
            thread = _thread_row(request.team_id, request.params["thread_id"])
            return actions.delete_thread(thread, actor=self.actor(request))
        self.engine.stop_runs(await db(remove)())
        return 204, None

    @route("POST", "threads/{thread_id}/copy")
    async def copy_thread(self, request, send):
        def copy():
            thread = _thread_row(request.team_id, request.params["thread_id"])
            made = actions.copy_thread(thread, actor=self.actor(request))
            return thread_json(_thread_row(request.team_id, made.pk))
        return 200, await db(copy)()

    @route("GET", "threads/{thread_id}/state")
    async def get_state(self, request, send):
        return 200, await db(thread_state)(request.team_id, request.params["thread_id"])

    @route("GET", "threads/{thread_id}/state/{checkpoint_id}")
    async def get_state_at(self, request, send):
        return 200, await db(thread_state)(request.team_id, request.params["thread_id"],
                                           request.params["checkpoint_id"])

    @route("POST", "threads/{thread_id}/state/checkpoint")
    async def get_state_checkpoint(self, request, send):
        checkpoint = (request.json().get("checkpoint") or {}).get("checkpoint_id")
        return 200, await db(thread_state)(request.team_id, request.params["thread_id"],
                                           checkpoint)

    @route("POST", "threads/{thread_id}/state")
    async def update_state(self, request, send):
        body = request.json()
        if "values" not in body:
            raise Invalid({"values": ["Give the values to write."]})

        def write():
            thread = _thread_row(request.team_id, request.params["thread_id"])
            checkpoint = actions.update_state(thread, body["values"], actor=self.actor(request))
            return {"checkpoint": {"thread_id": str(thread.pk), "checkpoint_ns": "",
                                   "checkpoint_id": checkpoint.checkpoint_id,
                                   "checkpoint_map": None}}
        return 200, await db(write)()

    @route("POST", "threads/{thread_id}/history")
    async def post_history(self, request, send):
        body = request.json()
        limit, _ = _page({"limit": body.get("limit", 10)})
        return 200, await db(thread_history)(request.team_id, request.params["thread_id"],
                                             limit, body.get("before") and
                                             (body["before"].get("checkpoint_id")
                                              if isinstance(body["before"], dict)
                                              else body["before"]))

    @route("GET", "threads/{thread_id}/history")
    async def get_history(self, request, send):
        limit, _ = _page({"limit": request.arg("limit", 10)})
        return 200, await db(thread_history)(request.team_id, request.params["thread_id"],
                                             limit, request.arg("before"))

"""The service routes (health, info) and the assistants: a team's real-time
deployments the caller may call."""
from __future__ import annotations

from deployments.errors import NotFound

from ..assistants import assistant_json, load_assistants
from ..asyncdb import db
from .http import route
from .reads import _page


class ServiceRoutes:
    """Routes of ``ThreadsServer``: health, info, assistants."""

    @route("GET", "ok")
    async def ok(self, request, send):
        return 200, {"ok": True}

    @route("GET", "info")
    async def info(self, request, send):
        return 200, {"version": "hangar", "flags": {"assistants": True, "crons": True}}

    # Assistants ---------------------------------------------------------------------

    async def _assistants(self, request):
        rows = await db(load_assistants)(request.team_id)
        return [(a, d) for a, d in rows if request.caller.may_call(request.team_id,
                                                                      a.agent_slug)]

    @route("POST", "assistants/search")
    async def search_assistants(self, request, send):
        body = request.json()
        limit, offset = _page(body)
        rows = [assistant_json(a, d) for a, d in await self._assistants(request)
                if not body.get("graph_id") or a.agent_slug == body["graph_id"]]
        metadata = body.get("metadata") or {}
        rows = [r for r in rows if all(r["metadata"].get(k) == v for k, v in metadata.items())]
        return 200, rows[offset:offset + limit]

    @route("POST", "assistants/count")
    async def count_assistants(self, request, send):
        return 200, len(await self._assistants(request))

    @route("GET", "assistants/{assistant_id}")
    async def get_assistant(self, request, send):
        found = await self.assistant(request, request.params["assistant_id"])
        for a, d in await self._assistants(request):
            if a == found:
                return 200, assistant_json(a, d)
        raise NotFound(f"no assistant {request.params['assistant_id']}")

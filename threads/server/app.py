"""``ThreadsServer``: the ASGI app the gateway mounts — the team from the path,
the caller from its key, the body read within the limit, the route found in
the table and its answer sent as JSON; the routes themselves come from one
mixin per resource."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from urllib.parse import parse_qs, unquote

from cachetools import TTLCache

from deployments.errors import DomainError, Invalid, NotFound
from gateway import conf as gateway_conf
from gateway.limits import Limited

from ..actions import Assistant, caller_actor
from ..assistants import load_assistants
from ..asyncdb import db
from ..engine import Engine
from .crons import CronRoutes
from .http import ROUTES, Answer, Request
from .reads import dumps
from .runs import RunRoutes
from .service import ServiceRoutes
from .threads import ThreadRoutes

log = logging.getLogger(__name__)
PREFIX = "/lg/"
REFRESH_S = 2.0  # assistants older than this are loaded again (behind the requests)
STALE_S = 30.0  # … and no longer served at all
HOLD_S = 3600  # a concurrency slot's expiry (renewed per request): a killed process frees it


class ThreadsServer(ServiceRoutes, ThreadRoutes, RunRoutes, CronRoutes):
    """Mounted by the gateway (``HANGAR_GATEWAY_MOUNTS``) with the gateway itself:
    its endpoint table, callers, HTTP client and run recorder."""

    def __init__(self, gateway):
        self.gateway = gateway
        self.engine = Engine(gateway)
        # team id → (its assistants, monotonic time loaded); refreshed behind the
        # requests that use it (``_assistants_of``), never in their way.
        self.assistants: TTLCache = TTLCache(maxsize=1000, ttl=STALE_S)
        self.reloading: dict[int, asyncio.Task] = {}

    async def startup(self) -> None:
        await self.engine.start()

    async def shutdown(self) -> None:
        await self.engine.stop()

    # Plumbing -------------------------------------------------------------------------

    async def __call__(self, scope, receive, send) -> None:
        try:
            await self._serve(scope, receive, send)
        except Answer as answer:
            await self._send_json(send, answer.status, answer.payload, answer.headers)
        except DomainError as exc:
            await self._send_json(send, exc.status, {"detail": exc.detail})
        except Exception:
            log.exception("threads: %s %s failed", scope["method"], scope["path"])
            await self._send_json(send, 500, {"detail": "internal error in the threads API"})

    async def _serve(self, scope, receive, send) -> None:
        team_slug, _, rest = scope["path"][len(PREFIX):].partition("/")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope["headers"]}
        team_id = next((r.team_id for k, r in self.gateway.table.routes.items()
                        if k[0] == team_slug), None)
        key = headers.get("x-api-key", "").strip()
        auth = {"authorization": f"Bearer {key}"} if key else headers
        caller = await self.gateway.callers.authenticate(auth)
        if team_id is None or (caller is not None and caller.team_id != team_id):
            raise NotFound(f"no team {team_slug} here")
        if caller is None:
            raise Answer(401, {"detail": "give a gateway key or API token of the team in "
                                         "x-api-key or 'Authorization: Bearer <key>'"},
                         {"www-authenticate": "Bearer"})
        # The caller's limits, as on /gw/ (one count per request; a streamed or
        # waited-for run holds its slot until its answer ends).
        try:
            held = await self.gateway.limiter.acquire(
                caller=caller.ident, rate_per_s=caller.rate_per_s,
                concurrent=caller.concurrent, deployment="", deployment_limit=None,
                hold_s=HOLD_S)
        except Limited as exc:
            raise Answer(429, {"detail": exc.reason},
                         {"retry-after": str(exc.retry_after)}) from None
        try:
            await self._dispatch(scope, receive, send, headers, caller, team_id, team_slug,
                                 rest)
        finally:
            await self.gateway.limiter.release(held)

    async def _dispatch(self, scope, receive, send, headers, caller, team_id, team_slug,
                        rest) -> None:
        body = await self._read(receive, headers)
        host = headers.get("host", "127.0.0.1")
        base = f"{scope.get('scheme', 'http')}://{host}{PREFIX}{team_slug}"
        method = scope["method"]
        path = unquote(rest.strip("/"))
        allowed = False
        for want, regex, name in ROUTES:
            match = regex.match(path)
            if match is None:
                continue
            allowed = True
            if want != method:
                continue
            request = Request(method=method, path=path,
                              query=parse_qs(scope.get("query_string", b"").decode()),
                              headers=headers, body=body, caller=caller, team_id=team_id,
                              team_slug=team_slug, base=base, receive=receive,
                              params=match.groupdict())
            answer = await getattr(self, name)(request, send)
            if answer is not None:
                status, payload, extra = answer if len(answer) == 3 else (*answer, {})
                await self._send_json(send, status, payload, extra)
            return
        if allowed:
            raise Answer(405, {"detail": f"{method} is not allowed on /{path}"})
        raise NotFound(f"no route /{path}")

    @staticmethod
    async def _read(receive, headers) -> bytes:
        limit = gateway_conf.MAX_BODY
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            raise Answer(413, {"detail": f"request body larger than {limit} bytes"})
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise Answer(499, {"detail": "client went away"})
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise Answer(413, {"detail": f"request body larger than {limit} bytes"})
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)

    @staticmethod
    async def _send_json(send, status: int, payload, headers: dict | None = None) -> None:
        body = b"" if status == 204 else dumps(payload)
        raw = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]
        raw += [(k.lower().encode(), str(v).encode()) for k, v in (headers or {}).items()]
        with contextlib.suppress(Exception):
            await send({"type": "http.response.start", "status": status, "headers": raw})
            await send({"type": "http.response.body", "body": body})

    async def assistant(self, request: Request, assistant_id) -> Assistant:
        if not isinstance(assistant_id, str) or not assistant_id:
            raise Invalid({"assistant_id": ["Give the assistant: <agent>:<environment>."]})
        agent, _, environment = assistant_id.partition(":")
        matches = [a for a, _ in await self._assistants_of(request.team_id)
                   if a.agent_slug == agent
                   and (not environment or a.environment == environment)]
        if len(matches) != 1 or not request.caller.may_call(request.team_id, agent):
            if len(matches) > 1:
                raise Invalid({"assistant_id": [
                    f"{agent} runs in {', '.join(a.environment for a in matches)}; "
                    "name one: <agent>:<environment>"]})
            raise NotFound(f"no assistant {assistant_id}")
        return matches[0]

    async def _assistants_of(self, team_id: int):
        """The team's assistants: loaded when not known; when older than
        ``REFRESH_S``, served as they are and loaded again behind the request."""
        known = self.assistants.get(team_id)
        if known is None:
            rows = await db(load_assistants)(team_id)
            self.assistants[team_id] = (rows, time.monotonic())
            return rows
        rows, loaded = known
        if time.monotonic() - loaded > REFRESH_S and team_id not in self.reloading:
            async def reload():
                try:
                    self.assistants[team_id] = (await db(load_assistants)(team_id),
                                                time.monotonic())
                except Exception:  # noqa: BLE001 - the next request tries again
                    log.warning("threads: assistants not reloaded", exc_info=True)
                finally:
                    self.reloading.pop(team_id, None)
            self.reloading[team_id] = asyncio.get_running_loop().create_task(reload())
        return rows

    def actor(self, request: Request):
        return caller_actor(request.caller.ident)

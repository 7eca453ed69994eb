"""The gateway ASGI application: ``/gw/<team>/<agent>/<environment>/<path>``.

Per request, in memory only: find the route (404 unknown, or another team's;
409 not real-time, with the reason), authenticate the caller (401), take its
limits (429 with ``Retry-After``), proxy (``proxy.forward``), record the run.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from django.conf import settings
from django.db import DatabaseError
from django.utils.module_loading import import_string

from . import conf, live, runs, sockets, split, upstream, writer, zero
from .callers import Callers
from .limits import Limited, limiter
from .proxy import (
    Answer,
    Body,
    ClientGone,
    Outcome,
    Watcher,
    forward,
    send_answer,
    upstream_session,
)
from .routes import Table

log = logging.getLogger(__name__)
PREFIX = "/gw/"


class Gateway:
    def __init__(self):
        self.table = Table()
        self.callers = Callers()
        self.limiter = None
        self.upstream: upstream.Pool | None = None  # the proxy's keep-alive connections
        self.client = None  # aiohttp's, for WebSockets and probes (proxy.upstream_session)
        self.loader: live.Loader | None = None
        self.recorder: runs.Recorder | None = None
        self.zero: zero.Zero | None = None
        self.sweeper: asyncio.Task | None = None
        # Apps served under a prefix by this process (HANGAR_GATEWAY_MOUNTS: prefix →
        # dotted path of a class taking the gateway), e.g. the threads API.
        self.mounts: list[tuple[str, object]] = []

    async def startup(self) -> None:
        self.limiter = limiter()
        self.client = upstream_session()
        self.upstream = upstream.Pool(conf.CONNECT_TIMEOUT_S)
        log.info("gateway: serving on %s", type(asyncio.get_running_loop()).__module__)
        self.loader = live.Loader(self.table)
        await self.loader.start()
        self.recorder = runs.Recorder(self.table, self.limiter.redis, writer.Writer())
        self.recorder.start()
        self.zero = zero.Zero(self.table, self.limiter.redis, self.client)
        self.sweeper = asyncio.get_running_loop().create_task(self._sweep())
        for prefix, dotted in getattr(settings, "HANGAR_GATEWAY_MOUNTS", {}).items():
            mounted = import_string(dotted)(self)
            await mounted.startup()
            self.mounts.append((prefix, mounted))

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(conf.REFRESH_S)
            try:
                self.upstream.sweep()  # idle upstream connections closed
                await self.zero.sweep()
            except Exception:  # noqa: BLE001 - try again next tick
                log.warning("gateway: sweep failed", exc_info=True)

    async def shutdown(self) -> None:
        for _, mounted in self.mounts:
            with contextlib.suppress(Exception):
                await mounted.shutdown()
        if self.sweeper is not None:
            self.sweeper.cancel()
        if self.zero is not None:
            await self.zero.close()
        if self.loader is not None:
            await self.loader.stop()
        if self.recorder is not None:
            await self.recorder.stop()
        if self.client is not None:
            await self.client.close()
        if self.upstream is not None:
            self.upstream.close()
        if self.limiter is not None:
            await self.limiter.close()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
        elif scope["type"] == "http":
            await self.http(scope, receive, send)
        elif scope["type"] == "websocket":
            await sockets.serve(self, scope, receive, send)

    async def lifespan(self, receive, send) -> None:
        while True:
            event = await receive()
            if event["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.exception("gateway startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif event["type"] == "lifespan.shutdown":
                try:
                    await self.shutdown()
                finally:
                    await send({"type": "lifespan.shutdown.complete"})
                return

    async def http(self, scope, receive, send) -> None:
        path = scope["path"]
        if path == "/healthz":
            await send_answer(send, 200, f"{len(self.table.routes)} routes loaded"
                              if self.loader and self.loader.loaded else "loading")
            return
        for prefix, mounted in self.mounts:
            if path.startswith(prefix):
                await mounted(scope, receive, send)
                return
        # ASGI gives header names in lower case already
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            route, caller, rest, preview = await self.admit(path, headers)
        except Answer as answer:
            await send_answer(send, answer.status, answer.reason, answer.headers)
            return
        started, started_ns = time.monotonic(), time.time_ns()
        outcome = Outcome()
        zeroes = route.scale_to_zero_after_s is not None
        if zeroes:
            await self.zero.touch(route)
        cold = zeroes and not route.replicas
        if cold:  # at zero: hold it while the first replica starts
            try:
                route = await self.zero.hold(route)
            except zero.Held as exc:
                await send_answer(send, 503, exc.reason, {"retry-after": "5"})
                return
        try:
            held = [] if caller.rate_per_s is None and caller.concurrent is None \
                and route.concurrency is None else await self.limiter.acquire(
                    caller=caller.ident, rate_per_s=caller.rate_per_s,
                    concurrent=caller.concurrent, deployment=route.name,
                    deployment_limit=route.deployment_limit, hold_s=route.request_timeout_s)
        except Limited as exc:
            await send_answer(send, 429, exc.reason, {"retry-after": str(exc.retry_after)})
            return
        body = Body(receive, conf.MAX_BODY)
        task = asyncio.current_task()
        watcher = Watcher(body, task, outcome)
        try:
            async with asyncio.timeout(route.request_timeout_s):
                await forward(self.upstream, route, caller, scope, body, send, rest, outcome,
                              headers=headers, preview=preview)
        except Answer as answer:
            await self._answer(send, outcome, answer.status, answer.reason, answer.headers)
        except TimeoutError:
            reason = f"no answer within the request timeout ({route.request_timeout_s:g}s)"
            await self._answer(send, outcome, 504, reason)
        except (asyncio.CancelledError, ClientGone) as exc:
            if isinstance(exc, asyncio.CancelledError) and not body.gone:
                raise  # the server is stopping, not a client leaving
            outcome.error = "the client went away"
            outcome.status = outcome.status or 499
            if task.cancelling():
                task.uncancel()  # the cancel the watcher made: the upstream is freed
        finally:
            await watcher.stop()
            if held:
                await self.limiter.release(held)
            if zeroes:
                await self.zero.touch(route)
            if cold and outcome.first_byte_at is not None and outcome.replica:
                deployment_id = next((r.deployment_id for r in route.replicas
                                      if r.name == outcome.replica), route.deployment_ids[0])
                await self.zero.record_cold_start(deployment_id,
                                                  outcome.first_byte_at - started)
            self.recorder.add(route, caller, outcome, scope["method"], rest, started_ns,
                              time.monotonic() - started)

    async def admit(self, path: str, headers: dict[str, str]):
        """Route and caller of a request (or a WebSocket) for ``path``, the path
        on the agent and whether it asks for the preview; ``Answer`` otherwise."""
        parts = path[len(PREFIX):].split("/", 3) if path.startswith(PREFIX) else []
        if len(parts) < 3 or not all(parts[:3]):
            raise Answer(404, "use /gw/<team>/<agent>/<environment>/<path>")
        team, agent, environment = parts[:3]
        rest = "/" + (parts[3] if len(parts) > 3 else "")
        preview, rest = split.preview_path(rest)  # blue-green's preview URL (#15)
        route = self.table.get((team, agent, environment))
        try:
            caller = await self.callers.authenticate(headers)
        except DatabaseError:
            raise Answer(503, "cannot check the caller's key now (database unavailable); "
                              "try again", {"retry-after": "2"}) from None
        # Unknown and another team's look the same: 404, before any other answer.
        if route is None or (caller is not None and caller.team_id != route.team_id):
            raise Answer(404, f"no deployment {team}/{agent}/{environment}")
        if caller is None:
            raise Answer(401, "give a gateway key or API token of the team as "
                              "'Authorization: Bearer <key>'", {"www-authenticate": "Bearer"})
        if not caller.may_call(route.team_id, agent):
            raise Answer(404, f"no deployment {team}/{agent}/{environment}")
        if route.refusal:
            raise Answer(409, route.refusal)
        return route, caller, rest, preview

    @staticmethod
    async def _answer(send, outcome: Outcome, status: int, reason: str,
                      headers: dict | None = None) -> None:
        outcome.error = reason
        outcome.complete = True  # the watcher must not take the end of it for a leaving
        if outcome.started:
            # The answer already started: all that is left is to end it.
            with contextlib.suppress(Exception):
                await send({"type": "http.response.body", "body": b""})
            return
        outcome.status = status
        with contextlib.suppress(Exception):
            await send_answer(send, status, reason, headers)

"""WebSocket pass-through: a WebSocket to ``/gw/<team>/<agent>/<env>/<path>``
reaches ``<path>`` on a replica, proxied both ways.

Before the upgrade, the same admission as a request (``Gateway.admit``: route,
caller's key, 404/401/409), the same hold at zero replicas and the same limits
(429); a refusal is a plain HTTP answer with its reason (ASGI's
``websocket.http.response``). The upstream handshake comes first, so a replica
that refuses the connection is skipped (ejected, one retry on another, as a
request) and a refusal by the agent (say 404) is the caller's answer. Once
open, text and binary messages pass unchanged, and so does the close code and
reason of whichever side closes first. A session counts as one outstanding
request on its replica for its whole life (balancing, in-flight figures,
drain); it lasts at most the version's request timeout (then 1001). When its
replica is removed, the session has ``HANGAR_GATEWAY_WS_DRAIN_S`` to end, then
both sides are closed with 1012 (service restart) so the client reconnects to
a ready replica; a gateway stopping closes them with 1012 too (uvicorn).
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import time
from urllib.parse import quote

import aiohttp

from . import balancer, conf, split, zero
from .balancer import Replica
from .limits import Limited
from .proxy import NOT_FORWARDED, PATH_SAFE, Answer, Outcome, forwarded_headers

NOT_FORWARDED_WS = NOT_FORWARDED | {"sec-websocket-key", "sec-websocket-version",
                                    "sec-websocket-extensions", "sec-websocket-protocol"}
NO_STATUS, ABNORMAL = 1005, 1006  # close codes that never go on the wire


def short(reason: str) -> str:
    """A close reason as it fits in a close frame (123 bytes of UTF-8)."""
    return reason.encode()[:120].decode(errors="ignore")


async def reject(scope, send, status: int, reason: str,
                 headers: dict[str, str] | None = None) -> None:
    """Refuse the upgrade with an HTTP answer (or a bare refusal where the
    server cannot send one)."""
    if "websocket.http.response" not in (scope.get("extensions") or {}):
        await send({"type": "websocket.close", "code": 1008, "reason": short(reason)})
        return
    body = json.dumps({"detail": reason}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), str(v).encode()) for k, v in (headers or {}).items()]
    await send({"type": "websocket.http.response.start", "status": status, "headers": raw})
    await send({"type": "websocket.http.response.body", "body": body})


async def serve(gateway, scope, receive, send) -> None:
    if (await receive())["type"] != "websocket.connect":
        return
    path = scope["path"]
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    try:
        route, caller, rest, preview = await gateway.admit(path, headers)
    except Answer as answer:
        await reject(scope, send, answer.status, answer.reason, answer.headers)
        return
    started, started_ns = time.monotonic(), time.time_ns()
    outcome = Outcome()
    await gateway.zero.touch(route)
    if not route.replicas and route.scale_to_zero_after_s is not None:
        try:
            route = await gateway.zero.hold(route)
        except zero.Held as exc:
            await reject(scope, send, 503, exc.reason, {"retry-after": "5"})
            return
    try:
        held = await gateway.limiter.acquire(
            caller=caller.ident, rate_per_s=caller.rate_per_s, concurrent=caller.concurrent,
            deployment=route.name, deployment_limit=route.deployment_limit,
            hold_s=route.request_timeout_s)
    except Limited as exc:
        await reject(scope, send, 429, exc.reason, {"retry-after": str(exc.retry_after)})
        return
    try:
        upstream = forwarded_headers(headers, scope, caller, outcome, skip=NOT_FORWARDED_WS)
        query = scope.get("query_string", b"").decode("latin-1")
        target = quote(rest, safe=PATH_SAFE) + (f"?{query}" if query else "")
        try:
            replica, ws = await connect(gateway.client, route, target, upstream,
                                        scope.get("subprotocols") or (), outcome,
                                        preview=preview)
        except Answer as answer:
            outcome.status, outcome.error = answer.status, answer.reason
            await reject(scope, send, answer.status, answer.reason, answer.headers)
            return
        try:
            await session(ws, replica, receive, send, outcome, route.request_timeout_s)
        finally:
            replica.outstanding -= 1
            with contextlib.suppress(Exception):
                await ws.close()
    finally:
        await gateway.limiter.release(held)
        await gateway.zero.touch(route)
        gateway.recorder.add(route, caller, outcome, "GET", rest, started_ns,
                             time.monotonic() - started)


async def connect(client: aiohttp.ClientSession, route, target: str, headers: list,
                  protocols, outcome: Outcome, *, preview: bool = False
                  ) -> tuple[Replica, aiohttp.ClientWebSocketResponse]:
    """The upstream WebSocket on a replica (counted outstanding on it), retried
    once on another when the connection itself failed; ``Answer`` otherwise."""
    tried: set[str] = set()
    replicas = split.pool(route, preview=preview)
    for _attempt in range(2):
        replica = balancer.pick(replicas, exclude=tried)
        if replica is None:
            if tried:
                raise Answer(502, f"{route.name}: replicas {', '.join(sorted(tried))} "
                                  "refused the connection")
            raise Answer(503, f"{route.name} has no ready replica", {"retry-after": "1"})
        tried.add(replica.name)
        outcome.replica = replica.name
        replica.outstanding += 1
        try:
            ws = await client.ws_connect(
                replica.url + target, headers=headers, protocols=tuple(protocols),
                autoping=True, compress=0, max_msg_size=conf.MAX_BODY,
                timeout=aiohttp.ClientWSTimeout(ws_close=5.0))
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            replica.outstanding -= 1
            replica.eject(f"connection failed: {exc}")
            continue  # nothing was sent: one retry on another replica
        except aiohttp.WSServerHandshakeError as exc:
            replica.outstanding -= 1
            status = exc.status if 400 <= exc.status < 600 else 502
            replica.answered(status)
            raise Answer(status, f"{replica.name} refused the WebSocket: {exc.status} "
                                 f"{exc.message}") from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            replica.outstanding -= 1
            replica.answered(502)
            raise Answer(502, f"{replica.name} failed during the WebSocket handshake: "
                              f"{exc or type(exc).__name__}") from None
        replica.answered(101)
        return replica, ws
    raise Answer(502, f"{route.name}: replicas {', '.join(sorted(tried))} refused the "
                      "connection")


async def session(ws: aiohttp.ClientWebSocketResponse, replica: Replica, receive, send,
                  outcome: Outcome, timeout_s: float) -> None:
    """Accept the caller's WebSocket and pass messages both ways until a side
    closes (its code and reason go to the other), the replica leaves, or the
    request timeout."""
    await send({"type": "websocket.accept", "subprotocol": ws.protocol,
                "headers": [(b"x-hangar-replica", replica.name.encode())]})
    outcome.status, outcome.started = 101, True

    async def inbound() -> tuple[str, int, str]:
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return "client", message.get("code") or NO_STATUS, message.get("reason") or ""
            text, data = message.get("text"), message.get("bytes")
            try:
                if text is not None:
                    outcome.bytes_in += len(text)
                    await ws.send_str(text)
                else:
                    outcome.bytes_in += len(data or b"")
                    await ws.send_bytes(data or b"")
            except (aiohttp.ClientError, ConnectionError, RuntimeError):
                return "agent", ABNORMAL, ""

    async def outbound() -> tuple[str, int, str]:
        while True:
            message = await ws.receive()
            if message.type == aiohttp.WSMsgType.TEXT:
                reply = {"type": "websocket.send", "text": message.data}
            elif message.type == aiohttp.WSMsgType.BINARY:
                reply = {"type": "websocket.send", "bytes": message.data}
            elif message.type == aiohttp.WSMsgType.CLOSE:
                return "agent", message.data or NO_STATUS, message.extra or ""
            elif message.type == aiohttp.WSMsgType.ERROR:
                return "agent", ABNORMAL, str(message.data)
            else:  # closing or closed: it went away without a close frame
                return "agent", ws.close_code or ABNORMAL, ""
            if outcome.first_byte_at is None:
                outcome.first_byte_at = time.monotonic()
            outcome.bytes_out += len(message.data)
            try:
                await send(reply)
            except Exception:  # noqa: BLE001 - the server says so in its own words
                return "client", ABNORMAL, ""

    async def leaving() -> tuple[str, int, str]:
        await replica.leaving.wait()
        await asyncio.sleep(conf.WS_DRAIN_S)
        return "gateway", 1012, f"{replica.name} is being replaced: reconnect"

    tasks = [asyncio.ensure_future(side()) for side in (inbound, outbound, leaving)]
    try:
        done, _ = await asyncio.wait(tasks, timeout=timeout_s,
                                     return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
    if done:
        side, code, reason = next(t for t in tasks if t in done).result()
    else:
        side, code, reason = "gateway", 1001, f"the session reached the request timeout " \
                                              f"({timeout_s:g}s)"
    outcome.complete = True
    if side == "client":  # gone: tell the agent with the client's own code
        if code in (NO_STATUS, ABNORMAL):
            code, reason = 1001, "the client went away"
        with contextlib.suppress(Exception):
            await ws.close(code=code, message=short(reason).encode())
        return
    if side == "agent" and code == ABNORMAL:
        outcome.error = f"{replica.name} dropped the connection"
        code, reason = 1014, outcome.error  # 1014: bad gateway
    elif code == NO_STATUS:
        code = 1000
    if side == "gateway":
        outcome.error = reason
        with contextlib.suppress(Exception):
            await ws.close(code=code, message=short(reason).encode())
    with contextlib.suppress(Exception):
        await send({"type": "websocket.close", "code": code, "reason": short(reason)})

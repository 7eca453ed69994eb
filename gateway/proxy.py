"""The proxy: one ASGI HTTP request in, one upstream request to a replica out.

Both bodies stream: the request body is forwarded as it arrives (413 once it
passes ``MAX_BODY``), the answer is sent on chunk by chunk as the agent writes
it (SSE and chunked answers are never buffered). The whole exchange is bounded
by the version's request timeout; a client that goes away cancels the upstream
request. A connection that fails before anything was sent is retried once on
another replica; anything later is never retried.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from dataclasses import dataclass
from urllib.parse import quote

import aiohttp

from . import balancer, conf, split, upstream
from .balancer import Replica
from .callers import Caller
from .routes import Route

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
              "trailer", "transfer-encoding", "upgrade", "host", "content-length"}
NOT_FORWARDED = HOP_BY_HOP | {"authorization", "cookie"}
# Of an answer's headers, those the gateway's server writes itself (as nginx
# hides them): passed on, they came twice.
NOT_RETURNED = {k.encode() for k in HOP_BY_HOP | {"date", "server"}}
# From this many seconds into a request, a disconnect of its client is watched
# for (most answers are complete by then: they need no watching task).
WATCH_AFTER_S = 0.2
SMALL_BODY = 64 * 1024  # a body with a Content-Length up to this is read whole, then sent
PATH_SAFE = "/:@!$&'()*+,;=~"  # RFC 3986 pchar and "/", left as they are


class Answer(Exception):
    """An answer the gateway gives itself (an error, with its reason)."""

    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None):
        super().__init__(reason)
        self.status, self.reason, self.headers = status, reason, headers or {}


class ClientGone(Exception):
    pass


@dataclass
class Outcome:
    """What a proxied request came to (for its run record and the figures)."""

    status: int = 0
    replica: str = ""
    bytes_in: int = 0
    bytes_out: int = 0
    first_byte_s: float | None = None  # from sending upstream to the first byte back
    first_byte_at: float | None = None  # monotonic
    error: str = ""
    traceparent: str = ""
    caller_parent: str = ""  # the caller's own span (it sent a traceparent)
    started: bool = False  # the response began: no status of our own any more
    complete: bool = False  # the last byte is being sent: a disconnect now is the end


async def send_answer(send, status: int, reason: str, headers: dict[str, str] | None = None
                      ) -> None:
    body = json.dumps({"detail": reason}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), str(v).encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def traceparent(headers: dict[str, str]) -> tuple[str, str]:
    """The W3C traceparent the agent is given — the caller's trace (a new one
    when it sent none) with a span of the gateway's own — and the caller's span
    id ("" when it sent none)."""
    # Ids as OpenTelemetry's SDK makes them (random bits, not a system call each).
    span = f"{random.getrandbits(64) or 1:016x}"
    given = headers.get("traceparent")
    if given:
        parts = given.split("-")
        try:
            if len(parts) == 4 and len(parts[1]) == 32 and len(parts[2]) == 16 \
                    and int(parts[1], 16) and int(parts[2], 16):
                return f"00-{parts[1].lower()}-{span}-01", parts[2].lower()
        except ValueError:
            pass
    return f"00-{random.getrandbits(128) or 1:032x}-{span}-01", ""


class Body:
    """The request body as an async iterator over ASGI ``receive``, counted
    and capped; remembers whether any of it was handed to the upstream."""

    def __init__(self, receive, limit: int):
        self.receive, self.limit = receive, limit
        self.pending: dict | None = None
        self.size = 0
        self.started = False
        self.done = False
        self.finished = asyncio.Event()  # all of it was read: watch for a disconnect
        self.gone = False  # the client disconnected
        self.failure: Exception | None = None  # what ended reading it (while streamed)

    async def __aiter__(self):
        while not self.done:
            message = self.pending or await self.receive()
            self.pending = None
            if message["type"] == "http.disconnect":
                self.gone = True
                self.failure = ClientGone()
                raise self.failure
            chunk = message.get("body", b"")
            self.size += len(chunk)
            if self.size > self.limit:
                self.failure = Answer(413, f"request body larger than {self.limit} bytes")
                raise self.failure
            self.done = not message.get("more_body", False)
            if self.done:
                self.finished.set()
            if chunk:
                self.started = True
                yield chunk


def upstream_session() -> aiohttp.ClientSession:
    """aiohttp's session for what the proxy's own pool (``upstream.Pool``) does
    not do: WebSocket pass-through and the wake-up probes of scale to zero."""
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=30,
                                     use_dns_cache=False, happy_eyeballs_delay=None)
    return aiohttp.ClientSession(
        connector=connector, auto_decompress=False, trust_env=False,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=conf.CONNECT_TIMEOUT_S),
        skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"))


def forwarded_headers(headers: dict[str, str], scope, caller: Caller, outcome: Outcome,
                      skip: frozenset[str] | set[str] = NOT_FORWARDED) -> list[tuple[str, str]]:
    """The caller's headers as the agent gets them: hop-by-hop ones and the
    caller's credentials dropped; its trace, address and identity added."""
    outcome.traceparent, outcome.caller_parent = traceparent(headers)
    client_ip = (scope.get("client") or ("", 0))[0]
    forwarded = [(k, v) for k, v in headers.items() if k not in skip and k != "traceparent"]
    forwarded += [("traceparent", outcome.traceparent),
                  ("x-forwarded-for", client_ip),
                  ("x-forwarded-proto", scope.get("scheme", "http")),
                  ("x-hangar-caller", caller.ident)]
    return forwarded


async def forward(pool: upstream.Pool, route: Route, caller: Caller, scope,
                  body: Body, send, path: str, outcome: Outcome, *,
                  headers: dict[str, str] | None = None, preview: bool = False) -> None:
    """Proxy one request to a replica of ``route`` (of its rollout's preview
    revision with ``preview``); raises ``Answer`` for the gateway's own
    answers before the response started."""
    if headers is None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope["headers"]}
    length = headers.get("content-length", "")
    if length.isdigit() and int(length) > conf.MAX_BODY:
        raise Answer(413, f"request body larger than {conf.MAX_BODY} bytes")
    upstream_headers = forwarded_headers(headers, scope, caller, outcome)
    method = scope["method"]
    query = scope.get("query_string", b"").decode("latin-1")
    # The path as ASGI gives it is decoded: encoded again, so no character of it
    # (a space, CR/LF, a non-Latin-1 letter) can change the request line.
    target = quote(path, safe=PATH_SAFE) + (f"?{query}" if query else "")
    has_body = method not in ("GET", "HEAD", "OPTIONS", "DELETE") or length not in ("", "0")
    content: bytes | Body | None = None
    if not has_body:  # take the (empty) request message, so a disconnect can be seen
        message = await body.receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        body.done = True
        body.finished.set()
    elif length.isdigit() and int(length) <= SMALL_BODY:
        # A small body is read whole first: sent with its length, and resendable, so
        # a connection that fails is retried on another replica even after it was read.
        content = b"".join([chunk async for chunk in body])
    else:
        content = body  # streamed as it arrives (chunked upstream)

    tried: set[str] = set()
    # A rollout's weights pick the revision; a thread stays on its first one.
    replicas = split.pool(route, preview=preview, thread=split.thread_of(headers))
    for _attempt in range(2):
        replica = balancer.pick(replicas, exclude=tried)
        if replica is None and preview:
            raise Answer(404, f"{route.name} has no preview: no blue-green rollout is "
                              "waiting for promotion")
        if replica is None:
            if tried:
                raise Answer(502, f"{route.name}: no other replica to retry on after "
                                  f"{', '.join(sorted(tried))} refused the connection")
            raise Answer(503, f"{route.name} has no ready replica",
                         {"retry-after": "1"})
        tried.add(replica.name)
        outcome.replica = replica.name
        replica.outstanding += 1
        try:
            await _exchange(pool, replica, method, target, upstream_headers, content,
                            send, outcome)
            return
        except upstream.ConnectFailed as exc:
            timed_out = exc.timed_out
            why = "connection timed out" if timed_out else f"connection failed: {exc}"
            replica.eject(why)
            if isinstance(content, Body) and body.started:
                raise Answer(502, f"{replica.name} did not accept the connection" if timed_out
                             else f"{replica.name} failed: {exc}") from None
            continue  # nothing was sent: one retry on another replica
        finally:
            replica.outstanding -= 1
            outcome.bytes_in = body.size
    raise Answer(502, f"{route.name}: replicas {', '.join(sorted(tried))} refused the connection")


async def _exchange(pool: upstream.Pool, replica: Replica, method: str, target: str,
                    headers: list, content: bytes | Body | None, send, outcome: Outcome) -> None:
    started = time.monotonic()
    try:
        response = await pool.request(replica.address, method, target, headers, content)
    except upstream.ConnectFailed:
        raise  # nothing was sent: forward may retry
    except BaseException as exc:
        if isinstance(content, Body) and content.failure is not None:
            raise content.failure from None  # the caller's body: too big, or it left
        if not isinstance(exc, (upstream.UpstreamFailed, OSError)):
            raise
        replica.answered(502)
        raise Answer(502, f"{replica.name} failed mid-request: {exc or type(exc).__name__}"
                     ) from None
    try:
        replica.answered(response.status)
        outcome.status = response.status
        raw = [(name, v) for k, v in response.raw_headers
               if (name := k.lower()) not in NOT_RETURNED]
        raw.append((b"x-hangar-replica", replica.name.encode()))
        outcome.started = True
        await send({"type": "http.response.start", "status": response.status,
                    "headers": raw})
        length = response.content_length
        if method == "HEAD" or response.status in (204, 304):
            response.close()  # no body follows, whatever its headers say
            outcome.first_byte_at = time.monotonic()
            outcome.first_byte_s = outcome.first_byte_at - started
            outcome.complete = True
            await send({"type": "http.response.body", "body": b""})
            return
        if length is not None and length <= SMALL_BODY:
            await _send_whole(response, replica, send, outcome, started)
            return
        try:
            async for chunk in response.iter_chunks():
                if outcome.first_byte_s is None:
                    outcome.first_byte_at = time.monotonic()
                    outcome.first_byte_s = outcome.first_byte_at - started
                outcome.bytes_out += len(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except (upstream.UpstreamFailed, OSError) as exc:
            # Too late for a status: end the stream; the caller sees it cut short.
            outcome.error = f"{replica.name} failed mid-answer: {exc or type(exc).__name__}"
            replica.answered(502)
        outcome.complete = True
        await send({"type": "http.response.body", "body": b""})
    finally:
        response.close()  # a no-op once complete; cut short, the connection is dropped


async def _send_whole(response: upstream.Response, replica: Replica, send,
                      outcome: Outcome, started: float) -> None:
    """A small answer with a length: read whole, sent in one message."""
    try:
        chunk = await response.read()
    except (upstream.UpstreamFailed, OSError) as exc:
        outcome.error = f"{replica.name} failed mid-answer: {exc or type(exc).__name__}"
        replica.answered(502)
        chunk = b""
    outcome.first_byte_at = time.monotonic()
    outcome.first_byte_s = outcome.first_byte_at - started
    outcome.bytes_out += len(chunk)
    outcome.complete = True
    await send({"type": "http.response.body", "body": chunk})


async def watch_disconnect(body: Body, task: asyncio.Task, outcome: Outcome) -> None:
    """Cancel ``task`` when the client goes away (watched once its body was read;
    the server also says "disconnect" once the answer is complete: not a leaving)."""
    await body.finished.wait()
    while True:
        message = await body.receive()
        if message["type"] == "http.disconnect":
            if outcome.complete:
                return
            body.gone = True
            task.cancel()
            return


class Watcher:
    """``watch_disconnect`` for one request, from ``WATCH_AFTER_S`` into it on:
    a timer, not a task, for the many requests answered before that (a task
    per request cost the gateway about a twentieth of its time under load)."""

    __slots__ = ("body", "task", "outcome", "handle", "watching")

    def __init__(self, body: Body, task: asyncio.Task, outcome: Outcome):
        self.body, self.task, self.outcome = body, task, outcome
        self.watching: asyncio.Task | None = None
        self.handle = asyncio.get_running_loop().call_later(WATCH_AFTER_S, self._start)

    def _start(self) -> None:
        self.watching = asyncio.get_running_loop().create_task(
            watch_disconnect(self.body, self.task, self.outcome))

    async def stop(self) -> None:
        self.handle.cancel()
        if self.watching is not None:
            self.watching.cancel()
            with contextlib.suppress(BaseException):
                await self.watching

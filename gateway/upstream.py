"""The proxy's upstream HTTP/1.1: keep-alive connections per replica, each
request written in one call, each answer parsed by httptools (the parser
uvicorn serves with) as it arrives.

Why not aiohttp's client here: per proxied request it built a URL, a cookie
jar lookup, trace hooks, timers and a payload writer — a third of the
gateway's time under load (profiled with py-spy). The proxy needs none of it:
the address is known, the headers are the caller's, the answer is passed on
as bytes. aiohttp still serves the rest (WebSockets, wake-up probes).

A ``Response`` buffers what the replica sent and not yet taken: reading from
the replica pauses above ``HIGH_WATER`` bytes (a slow client slows its
replica, it does not fill the gateway's memory). A connection goes back to
its pool once the answer is complete and the request was written whole; one
cut short is closed, which frees the replica.
"""
from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator

import httptools

HIGH_WATER = 256 * 1024  # bytes of an answer held before reading from its replica pauses
IDLE_MAX = 512  # idle connections kept per replica (more are closed)
IDLE_S = 30.0  # an idle connection unused this long is closed (``Pool.sweep``)
_NO_HEADERS = frozenset({"expect"})  # the gateway answers 100-continue itself


class ConnectFailed(Exception):
    """The connection could not be made: nothing was sent (a retry is safe)."""

    def __init__(self, message: str, *, timed_out: bool = False):
        super().__init__(message)
        self.timed_out = timed_out


class UpstreamFailed(Exception):
    """The connection failed or the replica spoke bad HTTP after the request began."""


class Response:
    """One answer: status and headers, then its body as it arrives."""

    __slots__ = ("status", "raw_headers", "content_length", "_chunks", "_size", "_waiter",
                 "_done", "_error", "_conn", "head", "keep_alive", "chunked")

    def __init__(self, conn: _Connection):
        self.status = 0
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.content_length: int | None = None
        self.keep_alive = False
        self.chunked = False
        self.head: asyncio.Future = conn.loop.create_future()
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._waiter: asyncio.Future | None = None
        self._done = False
        self._error: Exception | None = None
        self._conn = conn

    # fed by the connection
    def _feed(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._size += len(chunk)
        if self._size > HIGH_WATER:
            self._conn.pause()
        self._wake()

    def _finish(self) -> None:
        self._done = True
        self._wake()

    def _fail(self, error: Exception) -> None:
        if self._done:
            return
        self._error = error
        if not self.head.done():
            self.head.set_exception(error)
            self.head.exception()  # retrieved: no warning when nobody waits any more
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # taken by the proxy
    async def _more(self) -> bytes | None:
        """What arrived since the last call (waiting for some); None at the end."""
        while not self._chunks:
            if self._done:
                return None
            if self._error is not None:
                raise self._error
            self._waiter = self._conn.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        chunk = self._chunks.popleft() if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        self._size = 0
        if not self._done:  # once done, the connection may serve another request already
            self._conn.resume()
        return chunk

    async def read(self) -> bytes:
        parts = []
        while (chunk := await self._more()) is not None:
            parts.append(chunk)
        return b"".join(parts)

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        while (chunk := await self._more()) is not None:
            yield chunk

    def close(self) -> None:
        """Done with it: a connection whose answer is not complete is closed."""
        if not self._done:
            self._conn.close()


class _Connection(asyncio.Protocol):
    def __init__(self, pool: Pool, address: str):
        self.pool, self.address = pool, address
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: Response | None = None
        self.closed = False
        self.writing = False  # a request body is still being written
        self.paused = False
        self.drained: asyncio.Future | None = None
        self.idle_since = 0.0
        self.sender: asyncio.Task | None = None  # writes a streamed body (held: tasks are weak)

    # asyncio.Protocol
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            # (an upgrade is never asked for: "upgrade" is not forwarded)
            self._lost(UpstreamFailed(f"bad HTTP from the replica: {exc or type(exc).__name__}"))
            self.close()

    def eof_received(self):
        return False  # close the transport

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.pool._forget(self)
        r = self.response
        if (exc is None and r is not None and r.head.done() and r.content_length is None
                and not r.chunked):
            self.response = None  # an answer delimited by the end of its connection
            r._finish()
        self._lost(UpstreamFailed(f"connection closed by the replica"
                                  f"{f' ({exc})' if exc else ''}"))
        self._undrain()

    def pause_writing(self) -> None:
        self.drained = self.loop.create_future()

    def resume_writing(self) -> None:
        self._undrain()

    def _undrain(self) -> None:
        """Whoever waits to write goes on (a closed connection ends its loop)."""
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)
        self.drained = None

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.response.raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        r = self.response
        r.status = self.parser.get_status_code()
        if r.status < 200:  # 100 Continue and the like: the real answer follows
            r.raw_headers = []
            return
        r.keep_alive = self.parser.should_keep_alive()
        for name, value in r.raw_headers:
            lowered = name.lower()
            if lowered == b"content-length" and value.isdigit():
                r.content_length = int(value)
            elif lowered == b"transfer-encoding" and b"chunked" in value.lower():
                r.chunked = True
        if not r.head.done():
            r.head.set_result(r)

    def on_body(self, body: bytes) -> None:
        self.response._feed(body)

    def on_message_complete(self) -> None:
        r = self.response
        if r is None or r.status < 200:
            return
        self.response = None
        r._finish()
        self.resume()
        if r.keep_alive and not self.writing:
            self.pool._put_back(self)
        else:
            self.close()

    # the pool's
    def _lost(self, error: Exception) -> None:
        r, self.response = self.response, None
        if r is not None:
            r._fail(error)

    def pause(self) -> None:
        if not self.paused and not self.closed:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and not self.closed:
            self.paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.pool._forget(self)
            if self.writing or self.transport.get_write_buffer_size():
                self.transport.abort()  # close() would wait for a replica that stopped reading
            else:
                self.transport.close()
            self._undrain()


def _head(method: str, target: str, address: str, headers: list[tuple[str, str]],
          framing: str) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"host: {address}"]
    lines += [f"{k}: {v}" for k, v in headers
              if k not in _NO_HEADERS and "\n" not in v and "\r" not in v]
    if framing:
        lines.append(framing)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")


class Pool:
    """Keep-alive connections to the replicas, by address (``host:port``)."""

    def __init__(self, connect_timeout_s: float):
        self.connect_timeout_s = connect_timeout_s
        self.idle: dict[str, list[_Connection]] = {}

    async def _connect(self, address: str) -> _Connection:
        host, _, port = address.rpartition(":")
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, conn = await asyncio.get_running_loop().create_connection(
                    lambda: _Connection(self, address), host.strip("[]"), int(port))
        except TimeoutError:
            raise ConnectFailed("connection timed out", timed_out=True) from None
        except (OSError, ValueError) as exc:
            raise ConnectFailed(str(exc) or type(exc).__name__) from None
        return conn

    def _take(self, address: str) -> _Connection | None:
        idle = self.idle.get(address)
        while idle:
            conn = idle.pop()
            if not conn.closed and not conn.transport.is_closing():
                return conn
        return None

    def _put_back(self, conn: _Connection) -> None:
        idle = self.idle.setdefault(conn.address, [])
        if len(idle) >= IDLE_MAX:
            conn.close()
        else:
            conn.idle_since = conn.loop.time()
            idle.append(conn)

    def _forget(self, conn: _Connection) -> None:
        idle = self.idle.get(conn.address)
        if idle and conn in idle:
            idle.remove(conn)

    async def request(self, address: str, method: str, target: str,
                      headers: list[tuple[str, str]],
                      body: bytes | AsyncIterator[bytes] | None) -> Response:
        """Send the request; the answer once its status and headers arrived.
        ``ConnectFailed`` when nothing was sent, ``UpstreamFailed`` after."""
        conn = self._take(address) or await self._connect(address)
        response = conn.response = Response(conn)
        sender = None
        try:
            if body is None:
                framing = "content-length: 0" if method in ("POST", "PUT", "PATCH") else ""
                conn.transport.write(_head(method, target, address, headers, framing))
            elif isinstance(body, bytes):
                conn.transport.write(_head(method, target, address, headers,
                                           f"content-length: {len(body)}") + body)
            else:
                conn.writing = True
                conn.transport.write(_head(method, target, address, headers,
                                           "transfer-encoding: chunked"))
                # Written beside the answer, as it arrives: a replica may answer
                # (or stream its answer) before it has read the whole body.
                sender = conn.sender = conn.loop.create_task(_stream(conn, body))
            return await response.head
        except BaseException:
            if sender is not None:
                sender.cancel()
            # Not conn.close(): an answer complete already gave the connection back
            # to the pool, maybe to another request by now.
            response.close()
            raise

    def sweep(self) -> int:
        """Close the connections idle for over ``IDLE_S`` (each holds a replica's
        connection, a thread in some servers); how many were closed."""
        closed = 0
        for address, idle in list(self.idle.items()):
            expired = [c for c in idle if c.loop.time() - c.idle_since > IDLE_S]
            for conn in expired:
                conn.close()
            closed += len(expired)
            if not idle:
                del self.idle[address]
        return closed

    def close(self) -> None:
        for idle in list(self.idle.values()):
            for conn in list(idle):
                conn.close()
        self.idle.clear()


async def _stream(conn: _Connection, body: AsyncIterator[bytes]) -> None:
    """A body of unknown length, chunked as it arrives. Whatever ends it early
    (the caller's body too big, the caller gone, the replica gone) closes the
    connection, and the answer's waiter hears of it (``Body.failure`` says
    which for the caller's side)."""
    write = conn.transport.write
    try:
        async for chunk in body:
            if conn.closed:
                return  # the replica answered or left: the answer (or its error) says
            write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
            while conn.drained is not None and not conn.closed:
                await conn.drained
        if not conn.closed:
            write(b"0\r\n\r\n")
    except BaseException:  # noqa: BLE001 - reported through the connection's answer
        conn.close()
    finally:
        conn.writing = False  # (an answer that ended meanwhile closed the connection)
        conn.sender = None

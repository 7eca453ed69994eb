"""The proxy's upstream HTTP/1.1 client (``gateway.upstream``) against real
loopback servers speaking raw HTTP: what a replica may send back, and what
the gateway must do with the connection afterwards."""
from __future__ import annotations

import asyncio
import contextlib

import pytest

from gateway import upstream
from tests.processes import free_port


class Server:
    """A loopback server; ``handler(reader, writer)`` serves each connection."""

    def __init__(self, handler):
        self.handler = handler
        self.connections = 0
        self.port = 0
        self.server = None

    async def __aenter__(self):
        async def serve(reader, writer):
            self.connections += 1
            with contextlib.suppress(ConnectionError):
                await self.handler(reader, writer)
            writer.close()

        self.server = await asyncio.start_server(serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        self.server.close()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


async def read_request(reader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    body = b""
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            body = await reader.readexactly(int(line.split(b":")[1]))
        if line.lower() == b"transfer-encoding: chunked":
            while True:
                size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                chunk = await reader.readexactly(size + 2)
                if size == 0:
                    break
                body += chunk[:-2]
    return head, body


async def requests_of(reader):
    """Each request on a connection, until the client ends it."""
    while True:
        try:
            yield await read_request(reader)
        except asyncio.IncompleteReadError:
            return


def run(coro):
    return asyncio.run(coro)


def test_keep_alive_connections_are_reused_and_the_request_arrives_as_sent():
    seen = []

    async def handler(reader, writer):
        async for head, body in requests_of(reader):
            seen.append((head, body))
            answer = b"echo:" + body
            writer.write(b"HTTP/1.1 200 OK\r\nX-Agent: yes\r\ncontent-length: %d\r\n\r\n%b"
                         % (len(answer), answer))
            await writer.drain()

    async def main():
        async with Server(handler) as server:
            pool = upstream.Pool(1.0)
            for i in range(5):
                r = await pool.request(server.address, "POST", f"/invoke?n={i}",
                                       [("content-type", "application/json")], b'{"i": %d}' % i)
                assert r.status == 200
                assert (b"X-Agent", b"yes") in r.raw_headers
                assert await r.read() == b'echo:{"i": %d}' % i
            pool.close()
            return server.connections

    assert run(main()) == 1  # five requests, one connection
    head, body = seen[3]
    assert head.startswith(b"POST /invoke?n=3 HTTP/1.1\r\n")
    assert b"content-type: application/json" in head
    assert body == b'{"i": 3}'


def test_chunked_and_close_delimited_answers_arrive_whole():
    async def chunked(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for part in (b"data: one\n\n", b"data: two\n\n"):
            writer.write(b"%x\r\n%b\r\n" % (len(part), part))
            await writer.drain()
            await asyncio.sleep(0.05)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        await reader.read()  # keep-alive: the client keeps it

    async def close_delimited(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end")
        await writer.drain()

    async def main():
        pool = upstream.Pool(1.0)
        async with Server(chunked) as server:
            r = await pool.request(server.address, "GET", "/s", [], None)
            parts = [c async for c in r.iter_chunks()]
            assert b"".join(parts) == b"data: one\n\ndata: two\n\n"
            assert len(parts) == 2  # passed on as they came, not held to the end
            assert len(pool.idle[server.address]) == 1
        async with Server(close_delimited) as server:
            r = await pool.request(server.address, "GET", "/c", [], None)
            assert await r.read() == b"until the end"
        pool.close()

    run(main())


def test_a_replica_that_is_not_there_fails_to_connect_and_one_that_dies_mid_answer_fails():
    async def dies(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly part")
        await writer.drain()
        writer.transport.abort()

    async def main():
        pool = upstream.Pool(1.0)
        with pytest.raises(upstream.ConnectFailed):
            await pool.request(f"127.0.0.1:{free_port()}", "GET", "/", [], None)
        async with Server(dies) as server:
            r = await pool.request(server.address, "GET", "/", [], None)
            with pytest.raises(upstream.UpstreamFailed):
                await r.read()
            assert not pool.idle.get(server.address)  # a broken connection is never reused
        pool.close()

    run(main())


def test_a_streamed_body_is_sent_chunked_and_a_slow_reader_pauses_the_replica():
    got = {}
    sent = {"bytes": 0}

    async def handler(reader, writer):
        head, body = await read_request(reader)
        got["head"], got["body"] = head, body
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        block = b"x" * 65536
        with contextlib.suppress(ConnectionError):
            for _ in range(200):  # 12.5 MiB, far more than the gateway may hold
                writer.write(b"%x\r\n%b\r\n" % (len(block), block))
                await writer.drain()
                sent["bytes"] += len(block)

    async def body():
        for part in (b"first ", b"second"):
            await asyncio.sleep(0.02)
            yield part

    async def main():
        pool = upstream.Pool(1.0)
        async with Server(handler) as server:
            r = await pool.request(server.address, "POST", "/up", [], body())
            first = await r._more()
            await asyncio.sleep(0.5)  # a client that does not read
            held = r._size
            r.close()
        pool.close()
        return first, held

    first, held = run(main())
    assert got["body"] == b"first second"
    assert b"transfer-encoding: chunked" in got["head"]
    assert first
    assert held <= upstream.HIGH_WATER + 256 * 1024  # paused, not 12.5 MiB in memory
    assert sent["bytes"] < 200 * 65536


def test_the_proxy_ends_an_answer_to_head_at_its_headers_and_the_next_request_still_works():
    from gateway.balancer import Replica
    from gateway.proxy import Outcome, _exchange

    async def handler(reader, writer):
        async for head, _ in requests_of(reader):
            # HEAD: the length of what GET would send, and no body
            body = b"" if head.startswith(b"HEAD") else b"0123456789"
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n" + body)
            await writer.drain()

    async def main():
        pool = upstream.Pool(1.0)
        async with Server(handler) as server:
            replica = Replica(name="r", address=server.address, deployment_id=1)
            answers = []
            for method in ("HEAD", "GET"):
                sent = []

                async def send(message, sent=sent):
                    sent.append(message)

                outcome = Outcome()
                async with asyncio.timeout(5):  # a HEAD answer read as if a body followed hangs
                    await _exchange(pool, replica, method, "/", [], None, send, outcome)
                answers.append((sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:]),
                                outcome.complete))
        pool.close()
        return answers

    assert run(main()) == [(200, b"", True), (200, b"0123456789", True)]


def test_connections_idle_too_long_are_closed_and_the_replica_sees_them_go(monkeypatch):
    async def main():
        gone = asyncio.Event()

        async def handler(reader, writer):
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()
            if await reader.read() == b"":  # the gateway closed its end
                gone.set()

        pool = upstream.Pool(1.0)
        async with Server(handler) as server:
            r = await pool.request(server.address, "GET", "/", [], None)
            assert await r.read() == b"ok"
            assert pool.sweep() == 0  # just used: kept
            monkeypatch.setattr(upstream, "IDLE_S", 0.0)
            await asyncio.sleep(0.01)
            assert pool.sweep() == 1
            await asyncio.wait_for(gone.wait(), 5)
            assert not pool.idle
        pool.close()

    run(main())

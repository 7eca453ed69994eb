"""NATS JetStream (nats-py): the durable pull consumer's lag is
``num_pending`` (messages of the stream not yet delivered to it) plus
``num_ack_pending`` (delivered, not acknowledged), from one consumer-info
answer. nats-py is asyncio; each call opens a connection, does its work and
closes it (a poll every few seconds needs nothing kept open)."""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from typing import ClassVar
from urllib.parse import urlsplit

import nats
import nats.errors
import nats.js.errors
from django.utils import timezone
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StreamConfig

from .base import Endpoint, LagReading, Source, SourceUnavailable
from .nats_deadletters import NatsDeadLetters

MONITORING_PORT = 8222  # nats-server -m 8222: the HTTP monitoring endpoint KEDA reads
GLOBAL_ACCOUNT = "$G"  # the account of a server without accounts configured
ERRORS = (nats.errors.Error, nats.js.errors.Error, OSError, asyncio.TimeoutError)


def run(coro):
    """Run ``coro`` to completion from sync code (a worker, or a thread of an
    ASGI server whose own loop is running)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


class NatsSource(NatsDeadLetters, Source):
    kind: ClassVar[str] = "nats"

    @property
    def servers(self) -> list[str]:
        return [s.strip() for s in self.config.url.split(",") if s.strip()]

    def endpoint(self) -> Endpoint:
        """The monitoring endpoint given, else the first server's host on the
        monitoring port (8222); the account given, else the global one."""
        address = self.config.monitoring
        if not address:
            host = urlsplit(self.servers[0] if self.servers else "").hostname or "localhost"
            address = f"[{host}]:{MONITORING_PORT}" if ":" in host else f"{host}:{MONITORING_PORT}"
        return Endpoint(address=address, account=self.config.account or GLOBAL_ACCOUNT)

    async def _session(self, work):
        nc = await self._connect()
        try:
            return await work(nc.jetstream(timeout=self.config.timeout_s))
        except nats.js.errors.NotFoundError:
            raise
        except ERRORS as exc:
            raise SourceUnavailable(_words(str(exc) or type(exc).__name__)) from None
        finally:
            await nc.close()

    async def _connect(self):
        """A connection, or SourceUnavailable with the first connect error
        (nats-py retries a refused first connect until its timeout otherwise)."""
        failed: asyncio.Future = asyncio.get_running_loop().create_future()

        async def remember(exc):
            if not failed.done():
                failed.set_result(str(exc) or type(exc).__name__)

        connecting = asyncio.ensure_future(nats.connect(
            servers=self.servers, connect_timeout=self.config.timeout_s,
            allow_reconnect=False, max_reconnect_attempts=0, error_cb=remember))
        done, _ = await asyncio.wait({connecting, failed}, timeout=self.config.timeout_s,
                                     return_when=asyncio.FIRST_COMPLETED)
        if connecting in done and connecting.exception() is None:
            return connecting.result()
        connecting.cancel()
        with contextlib.suppress(BaseException):
            await connecting
        if failed.done():
            why = failed.result()
        elif connecting in done:
            why = str(connecting.exception()) or type(connecting.exception()).__name__
        else:
            why = f"no answer within {self.config.timeout_s:g}s"
        raise SourceUnavailable(_words(f"{why} ({', '.join(self.servers)})"))

    def _do(self, work):
        return run(self._session(work))

    def ensure_group(self) -> None:
        c = self.config

        async def work(js):
            await _ensure_stream(js, c.stream, list(c.subjects))
            for name in (c.output, c.deadletter):
                if name:
                    await _ensure_stream(js, name, [name])
            try:
                await js.consumer_info(c.stream, c.group)
            except nats.js.errors.NotFoundError:
                await js.add_consumer(c.stream, ConsumerConfig(
                    durable_name=c.group, ack_policy=AckPolicy.EXPLICIT,
                    deliver_policy=DeliverPolicy.ALL, ack_wait=c.ack_wait_s,
                    max_deliver=-1, max_ack_pending=-1))
        try:
            self._do(work)
        except nats.js.errors.NotFoundError as exc:
            raise SourceUnavailable(_words(str(exc))) from None

    def lag(self) -> LagReading:
        c = self.config

        async def work(js):
            info = await js.consumer_info(c.stream, c.group)
            return info, await js.stream_info(c.stream)
        try:
            info, stream = self._do(work)
        except nats.js.errors.NotFoundError:
            return LagReading(at=timezone.now(),
                              error=f"stream {c.stream!r} or consumer {c.group!r} missing")
        except SourceUnavailable as exc:
            return LagReading(at=timezone.now(), error=str(exc.detail))
        waiting = int(info.num_ack_pending or 0)
        return LagReading(at=timezone.now(), lag=int(info.num_pending or 0) + waiting,
                          pending=waiting, produced=int(stream.state.last_seq or 0))


async def _ensure_stream(js, name: str, subjects: list[str]) -> None:
    try:
        await js.stream_info(name)
    except nats.js.errors.NotFoundError:
        await js.add_stream(StreamConfig(name=name, subjects=subjects))


def _words(text: str) -> str:
    return f"NATS: {text}"[:300]

"""Real brokers for the stream-core tests: this run's Redis (keys under a
prefix unique to the test) and NATS JetStream on 127.0.0.1:4222 (stream names
unique to the test), each deleted afterwards; and a private nats-server or
redis-server on a free port for outage tests."""
from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid

import nats
import redis

from .processes import free_port

NATS_URL = os.environ.get("HANGAR_TEST_NATS_URL", "nats://127.0.0.1:4222")


def redis_url() -> str:
    return os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/5")


class RedisKeys:
    def __init__(self):
        self.prefix = f"test-stream-{uuid.uuid4().hex[:10]}"
        self.source, self.output, self.deadletter = (
            f"{self.prefix}:in", f"{self.prefix}:out", f"{self.prefix}:dead")
        self.group = "workers"
        self.client = redis.Redis.from_url(redis_url(), decode_responses=True)

    def source_settings(self, **extra) -> dict:
        return {"kind": "redis", "url": redis_url(), "stream": self.source,
                "group": self.group, **extra}

    def settings(self, **extra) -> dict:
        return {"source": self.source_settings(), "output_stream": self.output,
                "deadletter_stream": self.deadletter, **extra}

    def broker_lag(self) -> tuple[int, int]:
        """(lag, pending) as Redis itself reports them now."""
        group = next(g for g in self.client.xinfo_groups(self.source)
                     if g["name"] == self.group)
        pending = self.client.xpending(self.source, self.group)["pending"]
        return int(group["lag"]) + pending, pending

    def cleanup(self) -> None:
        for key in self.client.scan_iter(f"{self.prefix}*"):
            self.client.delete(key)
        self.client.close()


def run(coro):
    return asyncio.run(coro)


class NatsNames:
    def __init__(self, url: str = NATS_URL):
        tag = uuid.uuid4().hex[:10]
        self.url = url
        self.stream, self.durable = f"T{tag}", "workers"
        self.subject = f"t{tag}.in"
        self.output, self.deadletter = f"T{tag}-out", f"T{tag}-dead"

    def source_settings(self, **extra) -> dict:
        return {"kind": "nats", "url": self.url, "stream": self.stream,
                "subjects": [self.subject], "durable": self.durable, **extra}

    def settings(self, **extra) -> dict:
        return {"source": self.source_settings(), "output_stream": self.output,
                "deadletter_stream": self.deadletter, **extra}

    async def _js(self, work):
        nc = await nats.connect(self.url)
        try:
            return await work(nc.jetstream())
        finally:
            await nc.close()

    def publish(self, count: int, body=lambda i: f"message {i}".encode()) -> None:
        async def work(js):
            for i in range(count):
                await js.publish(self.subject, body(i))
        run(self._js(work))

    def broker_lag(self) -> tuple[int, int]:
        async def work(js):
            return await js.consumer_info(self.stream, self.durable)
        info = run(self._js(work))
        return info.num_pending + info.num_ack_pending, info.num_ack_pending

    def messages(self, stream: str) -> list:
        """Every message now in ``stream``: (data, headers)."""
        async def work(js):
            info = await js.stream_info(stream)
            found = []
            if not info.state.messages:
                return found
            for seq in range(max(1, info.state.first_seq), info.state.last_seq + 1):
                try:
                    msg = await js.get_msg(stream, seq)
                except nats.js.errors.NotFoundError:
                    continue
                found.append((msg.data, msg.headers or {}))
            return found
        return run(self._js(work))

    def cleanup(self) -> None:
        async def work(js):
            for name in (self.stream, self.output, self.deadletter):
                try:
                    await js.delete_stream(name)
                except nats.js.errors.NotFoundError:
                    pass
        try:
            run(self._js(work))
        except Exception:  # noqa: BLE001  (a test that stopped its own server)
            pass


class OwnServer:
    """A redis-server or nats-server of the test's own, on a free port."""

    def __init__(self, kind: str):
        self.kind, self.port = kind, free_port()
        self.dir = tempfile.mkdtemp(prefix=f"hangar-{kind}-")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return (f"redis://127.0.0.1:{self.port}/0" if self.kind == "redis"
                else f"nats://127.0.0.1:{self.port}")

    def start(self) -> None:
        if self.kind == "redis":
            args = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port),
                    "--save", "", "--appendonly", "no", "--dir", self.dir]
        else:
            args = ["nats-server", "-js", "-a", "127.0.0.1", "-p", str(self.port),
                    "-sd", self.dir]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    time.sleep(0.3 if self.kind == "nats" else 0)
                    return
            time.sleep(0.05)
        raise AssertionError(f"{self.kind} server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

"""Stream deployments for the dead-letter and stream-panel tests: unique stream
keys on this run's Redis, the reference agent as a real consumer process, and
poison messages it dead-letters after its deliveries run out."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[1]
AGENT = ROOT / "agents" / "reference" / "agent.py"


def redis_url() -> str:
    return os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15")


class Keys:
    """The keys of one test's stream (unique per test), deleted afterwards."""

    def __init__(self):
        self.prefix = f"test-dl-{uuid.uuid4().hex[:10]}"
        self.source = f"{self.prefix}:in"
        self.output = f"{self.prefix}:out"
        self.deadletter = f"{self.prefix}:dead"
        self.group = "workers"
        self.client = redis.Redis.from_url(redis_url(), decode_responses=True)

    def settings(self) -> dict:
        """The version's stream settings for these keys."""
        return {"source": {"kind": "redis", "url": redis_url(), "stream": self.source,
                           "group": self.group},
                "output_stream": self.output, "deadletter_stream": self.deadletter,
                "max_deliveries": 2, "claim_idle_s": 0.1}

    def agent_env(self, **extra) -> dict:
        return {"AGENT_MODE": "stream", "STREAM_REDIS_URL": redis_url(),
                "STREAM_NAME": self.source, "STREAM_GROUP": self.group,
                "STREAM_OUTPUT": self.output, "STREAM_DEADLETTER": self.deadletter,
                "STREAM_MAX_DELIVERIES": "2", "STREAM_CLAIM_IDLE_MS": "100",
                "STREAM_BLOCK_MS": "100", **extra}

    def cleanup(self) -> None:
        for key in self.client.scan_iter(f"{self.prefix}*"):
            self.client.delete(key)
        self.client.close()


def start_consumer(keys: Keys, log: Path, **env) -> subprocess.Popen:
    """The reference agent consuming ``keys.source`` (no HTTP port needed by the test)."""
    from .processes import free_port

    full = {k: v for k, v in os.environ.items() if not k.startswith(("STREAM_", "AGENT_"))}
    full.update(keys.agent_env(PORT=str(free_port()), **env))
    return subprocess.Popen([sys.executable, str(AGENT)], cwd=ROOT, env=full,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)


def wait_until(predicate, timeout: float = 30, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def dead_letter_poison(keys: Keys, log: Path, count: int = 1) -> list[str]:
    """Add ``count`` poison messages, let a real consumer dead-letter them, stop
    it; the poison messages' source ids."""
    consumer = start_consumer(keys, log)
    try:
        ids = [keys.client.xadd(keys.source, {"input": "poison", "n": str(i)})
               for i in range(count)]
        wait_until(lambda: keys.client.xlen(keys.deadletter) >= count, what="dead letters")
    finally:
        consumer.terminate()
        consumer.wait(10)
    return ids

"""Throughput of a Redis stream deployment, read from the broker: messages
added to the source and results added to the output stream in the last
minute, and results per consumer (the ``instance`` field the reference agent
writes on every output entry).

Redis stream ids start with the millisecond the entry was added, so the
entries of a time window are an ``XRANGE`` from that millisecond; at most
``CAP`` entries are read per stream and a count that reached it is shown as
"at least"."""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import redis

CAP = 20_000


@dataclass(frozen=True)
class Throughput:
    window_s: int
    in_count: int
    out_count: int
    per_instance: list[tuple[str, int]] = field(default_factory=list)  # busiest first
    capped: bool = False

    def per_minute(self, count: int) -> float:
        return count * 60 / self.window_s

    @property
    def in_per_min(self) -> float:
        return self.per_minute(self.in_count)

    @property
    def out_per_min(self) -> float:
        return self.per_minute(self.out_count)

    @property
    def replicas(self) -> list[dict]:
        return [{"instance": name, "count": n, "per_min": self.per_minute(n)}
                for name, n in self.per_instance]


def throughput(client: redis.Redis, *, source: str, output: str, window_s: int = 60,
               now_ms: int | None = None) -> Throughput:
    """In and out counts over the last ``window_s`` seconds (raises
    ``redis.RedisError`` when the broker does not answer)."""
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    start = str(now_ms - window_s * 1000)
    pipe = client.pipeline(transaction=False)
    pipe.xrange(source, start, "+", count=CAP)
    pipe.xrange(output, start, "+", count=CAP)
    inputs, outputs = pipe.execute()
    per_instance = Counter(fields.get("instance", "") or "?" for _, fields in outputs)
    return Throughput(window_s=window_s, in_count=len(inputs), out_count=len(outputs),
                      per_instance=per_instance.most_common(),
                      capped=len(inputs) >= CAP or len(outputs) >= CAP)

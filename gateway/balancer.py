"""Choosing a replica: least outstanding requests by power of two choices,
and passive health — a replica that refuses connections, or answers a burst
of 5xx, is ejected for ``EJECT_S`` seconds (never more than half of them at
once: see ``pick``)."""
from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field

from . import conf


def eject_s() -> float:
    return conf.EJECT_S


FIVE_XX_BURST = 5  # consecutive 5xx answers that eject a replica


@dataclass(eq=False)
class Replica:
    """A ready instance as the gateway sees it; lives across table loads."""

    name: str
    address: str
    deployment_id: int
    outstanding: int = 0
    served: int = 0
    ejected_until: float = 0.0
    ejected_why: str = ""
    five_xx: int = 0
    removed: bool = False  # no longer ready: finishes its in-flight requests only
    revision_id: int | None = None  # what it runs (a rollout splits by it: split.py)
    # Set once it is removed: its WebSocket sessions close so their clients reconnect.
    leaving: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def available(self, now: float) -> bool:
        return not self.removed and now >= self.ejected_until

    def remove(self) -> None:
        """No new requests (it is draining or gone); in-flight ones finish."""
        self.removed = True
        self.leaving.set()

    def eject(self, why: str) -> None:
        self.ejected_until = time.monotonic() + eject_s()
        self.ejected_why = why

    def answered(self, status: int) -> None:
        if status >= 500:
            self.five_xx += 1
            if self.five_xx >= FIVE_XX_BURST:
                self.eject(f"{self.five_xx} answers 5xx in a row")
                self.five_xx = 0
        else:
            self.five_xx = 0


PANIC_SHARE = 0.5  # below this share of replicas not ejected, ejection is ignored


def pick(replicas: list[Replica], *, exclude: set[str] = frozenset()) -> Replica | None:
    """The less loaded of two random available replicas (None: none available).

    Panic, as Envoy does it: when fewer than half of the serving replicas are
    left after ejections, ejections are ignored and every one of them is a
    candidate. Under a burst, slow connects or a few 5xx could otherwise eject
    the replicas one after the other, each ejection sending its load to the
    rest (what dropped streams in the benchmark); a replica really gone still
    fails fast (connection refused) and the request is retried on another."""
    now = time.monotonic()
    serving = [r for r in replicas if not r.removed]
    candidates = [r for r in serving if now >= r.ejected_until and r.name not in exclude]
    if len(candidates) < PANIC_SHARE * len(serving):
        candidates = [r for r in serving if r.name not in exclude]
    if not candidates:
        return None
    if len(candidates) == 1:
        return candidates[0]
    n = len(candidates)
    i = random.randrange(n)
    j = (i + 1 + random.randrange(n - 1)) % n  # another one
    a, b = candidates[i], candidates[j]
    return a if a.outstanding <= b.outstanding else b

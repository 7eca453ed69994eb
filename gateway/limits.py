"""Limits shared by every gateway process, held in Redis: requests per second
and concurrent requests per caller, and in-flight requests per deployment.

A refusal is a ``Limited`` with the seconds to wait (``Retry-After``). Counters
of concurrent requests carry an expiry a little longer than the longest request,
so a gateway killed mid-request cannot hold a slot for ever. Without Redis
(standalone without ``REDIS_URL``) the counters live in this process; with
Redis unreachable, requests are served without the shared limits (logged).
"""
from __future__ import annotations

import logging
import time
from collections import defaultdict

import redis.asyncio as aioredis
from django.conf import settings
from redis.exceptions import RedisError

log = logging.getLogger(__name__)
WARN_EVERY_S = 30.0


class Limited(Exception):
    def __init__(self, reason: str, retry_after: int = 1):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class Limiter:
    def __init__(self, url: str | None):
        self.redis = aioredis.from_url(url) if url else None
        self.local: dict[str, int] = defaultdict(int)
        self.warned_at = 0.0  # when "limits not enforced" was last logged

    async def _incr(self, keys: list[tuple[str, int]]) -> list[int]:
        """Count one in on each key (with its expiry), in one round trip."""
        if self.redis is None:
            for key, _ in keys:
                self.local[key] += 1
            return [self.local[key] for key, _ in keys]
        async with self.redis.pipeline(transaction=True) as pipe:
            for key, expire_s in keys:
                pipe.incr(key)
                pipe.expire(key, expire_s)
            values = await pipe.execute()
        return [int(v) for v in values[::2]]

    async def acquire(self, *, caller: str, rate_per_s: int | None,
                      concurrent: int | None, deployment: str,
                      deployment_limit: int | None, hold_s: float) -> list[str]:
        """Count one request in; the slots to ``release`` after it, or ``Limited``.
        Every counter is taken in one Redis round trip (one more to release)."""
        hold = int(hold_s) + 60
        checks: list[tuple[str, int, int, str]] = []  # key, expiry, limit, refusal
        if rate_per_s is not None:
            checks.append((f"gw:rate:{caller}:{int(time.time())}", 2, rate_per_s,
                           f"caller {caller} is over its {rate_per_s} requests/s"))
        if concurrent is not None:
            checks.append((f"gw:conc:{caller}", hold, concurrent,
                           f"caller {caller} has {concurrent} requests in flight (its limit)"))
        if deployment_limit is not None:
            checks.append((f"gw:dep:{deployment}", hold, deployment_limit,
                           f"{deployment} has {deployment_limit} requests in flight "
                           "(its concurrency limit)"))
        if not checks:
            return []
        held = [key for key, _, _, _ in checks if not key.startswith("gw:rate:")]
        try:
            values = await self._incr([(key, expiry) for key, expiry, _, _ in checks])
        except RedisError as exc:
            # Redis away: serve without shared limits rather than fail the caller
            # (fail open), said once every WARN_EVERY_S, not once a request.
            now = time.monotonic()
            if now - self.warned_at >= WARN_EVERY_S:
                self.warned_at = now
                log.warning("gateway: limits not enforced (requests are served without "
                            "them), Redis does not answer: %s", exc)
            return []
        if self.warned_at:
            self.warned_at = 0.0
            log.warning("gateway: Redis answers again, limits enforced")
        for value, (_, _, limit, refusal) in zip(values, checks, strict=True):
            if value > limit:
                await self.release(held)
                raise Limited(refusal)
        return held

    async def release(self, held: list[str]) -> None:
        if not held:
            return
        if self.redis is None:
            for key in held:
                self.local[key] -= 1
            return
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for key in held:
                    pipe.decr(key)
                await pipe.execute()
        except RedisError:
            return  # the counters expire by themselves

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()


def limiter() -> Limiter:
    return Limiter(settings.REDIS_URL or None)

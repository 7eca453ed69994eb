"""Scale to zero (opt-in per version: ``pattern_settings.scale_to_zero_after_s``).

Idle that long — no request through any gateway process (``gw:last:<route>`` in
Redis, or this process's own clock without Redis) — the deployment is scaled
to 0 by the audited verb. A request that arrives at zero is held (at most
``HANGAR_GATEWAY_HOLD_MAX`` per route, at most the version's
``cold_start_wait_s``; beyond either, 503 with the reason), wakes the
deployment (scaled to 1) and is forwarded as soon as the first replica is
ready: while requests are held, the gateway itself looks for the starting
instance (its row, every ``LOOK_S``) and probes its readiness path every
``PROBE_S`` — the moment it answers 200 the replica is served (``Table.admit``)
and the held requests go to it, without waiting for the reconciler to mark it
ready and the live event to reload the table. Each such cold start — arrival
to first byte — is recorded in Redis (``gw:cold:<deployment>``, the last 200)
for the deployment page's p50/p95.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time

import aiohttp
from asgiref.sync import sync_to_async
from django.db import close_old_connections

from deployments import actions
from deployments.audit import Actor
from deployments.models import Deployment, DeploymentState, Instance, InstancePhase

from .routes import Route, Table

log = logging.getLogger(__name__)
ACTOR = Actor(user=None, source="gateway")
HOLD_MAX = int(os.environ.get("HANGAR_GATEWAY_HOLD_MAX", "100"))
COLD_KEPT = 200
PROBE_S = 0.02  # between readiness probes of a starting instance while requests wait
LOOK_S = 0.05  # between looks for the starting instance's row (only while requests wait)
PROBE_TIMEOUT_S = 1.0


class Held(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def cold_key(deployment_id: int) -> str:
    return f"gw:cold:{deployment_id}"


def _scale(deployment_ids: list[int], replicas: int, *, only_from: int | None) -> None:
    close_old_connections()
    for d in Deployment.objects.filter(pk__in=deployment_ids).select_related("agent"):
        if only_from is not None and d.replicas != only_from:
            continue
        actions.scale_deployment(d, replicas=replicas, actor=ACTOR)


def _starting(deployment_ids: list[int]) -> list[tuple[int, str, str, int | None, str]]:
    """Instances of these deployments with an address, not yet known ready:
    (deployment, name, address, revision, readiness path)."""
    close_old_connections()
    rows = (Instance.objects.filter(deployment_id__in=deployment_ids,
                                    deployment__state=DeploymentState.ACTIVE,
                                    phase__in=(InstancePhase.STARTING, InstancePhase.RUNNING))
            .exclude(address="").order_by("created_at")
            .values_list("deployment_id", "name", "address", "revision_id", "version__health"))
    return [(d, name, address, revision, (health or {}).get("ready_path", "/readyz"))
            for d, name, address, revision, health in rows]


class Zero:
    def __init__(self, table: Table, redis, client: aiohttp.ClientSession | None = None):
        self.table, self.redis, self.client = table, redis, client
        self.held: dict[tuple, int] = {}
        self.last_seen: dict[tuple, float] = {}
        self.waking: set[tuple] = set()
        self.probing: dict[tuple, asyncio.Task] = {}  # route key → its readiness prober

    async def touch(self, route: Route, *, force: bool = False) -> None:
        """A request arrived at or went through ``route`` (the idle clock restarts)."""
        if route.scale_to_zero_after_s is None:
            return
        now = time.time()
        if not force and now - self.last_seen.get(route.key, 0) < 1:
            return
        self.last_seen[route.key] = now
        if self.redis is not None:
            with contextlib.suppress(Exception):
                await self.redis.set(f"gw:last:{route.name}", now,
                                     ex=route.scale_to_zero_after_s * 2 + 60)

    async def hold(self, route: Route) -> Route:
        """Wait for a ready replica of ``route``, waking it; the route once ready."""
        key = route.key
        if self.held.get(key, 0) >= HOLD_MAX:
            raise Held(f"{route.name} is starting from zero and {HOLD_MAX} requests "
                       "are already waiting")
        self.held[key] = self.held.get(key, 0) + 1
        await self.touch(route, force=True)  # no sweep scales it down while it is held
        ready = self.table.ready_event(key)
        try:
            if route.desired == 0 and key not in self.waking:
                self.waking.add(key)
                try:
                    await sync_to_async(_scale, thread_sensitive=False)(
                        route.deployment_ids, 1, only_from=0)
                finally:
                    self.waking.discard(key)
            if self.client is not None and key not in self.probing and not ready.is_set():
                self.probing[key] = asyncio.get_running_loop().create_task(
                    self._probe(route), name=f"gateway-cold-{route.name}")
            try:
                async with asyncio.timeout(route.cold_start_wait_s):
                    await ready.wait()
            except TimeoutError:
                raise Held(f"{route.name} is scaled to zero and no replica got ready within "
                           f"{route.cold_start_wait_s:g}s") from None
        finally:
            self.held[key] -= 1
        return self.table.get(key) or route

    async def _probe(self, route: Route) -> None:
        """While requests for ``route`` are held: find its starting instances and
        probe their readiness; admit the first that answers 200."""
        key = route.key
        loop = asyncio.get_running_loop()
        found: list[tuple] = []
        look_at = 0.0
        try:
            while self.held.get(key) and key in self.table.waiting:
                if loop.time() >= look_at:
                    try:
                        found = await sync_to_async(_starting, thread_sensitive=False)(
                            route.deployment_ids)
                    except Exception:  # noqa: BLE001 - the table read still releases them
                        log.warning("gateway: cannot look for %s's starting instance",
                                    route.name, exc_info=True)
                    look_at = loop.time() + LOOK_S
                for deployment_id, name, address, revision_id, path in found:
                    if await self._ready(address, path):
                        log.info("gateway: %s answers its readiness probe: serving it",
                                 name)
                        self.table.admit(key, deployment_id, name, address, revision_id)
                        return
                await asyncio.sleep(PROBE_S)
        finally:
            self.probing.pop(key, None)

    async def _ready(self, address: str, path: str) -> bool:
        try:
            async with self.client.get(f"http://{address}{path}", allow_redirects=False,
                                       timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)
                                       ) as answer:
                await answer.read()
                return answer.status == 200
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False

    async def close(self) -> None:
        for task in list(self.probing.values()):
            task.cancel()

    async def record_cold_start(self, deployment_id: int, seconds: float) -> None:
        if self.redis is None:
            return
        with contextlib.suppress(Exception):
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.lpush(cold_key(deployment_id), f"{seconds:.4f}")
                pipe.ltrim(cold_key(deployment_id), 0, COLD_KEPT - 1)
                await pipe.execute()

    async def sweep(self) -> None:
        """Scale idle opt-in routes to zero (every table tick)."""
        now = time.time()
        for route in list(self.table.routes.values()):
            after = route.scale_to_zero_after_s
            if after is None or route.desired == 0 or route.refusal:
                continue
            if self.held.get(route.key) or any(r.outstanding for r in route.replicas):
                continue
            if not route.replicas:  # still starting: idle time counts once it serves
                await self.touch(route)
                continue
            last = self.last_seen.get(route.key)
            if self.redis is not None:
                try:
                    value = await self.redis.get(f"gw:last:{route.name}")
                except Exception:  # noqa: BLE001 - Redis away: decide next time
                    continue
                last = float(value) if value is not None else None
            if last is None:  # never seen: the idle clock starts now
                self.last_seen[route.key] = now
                if self.redis is not None:
                    await self.redis.set(f"gw:last:{route.name}", now, ex=after * 2 + 60)
                continue
            if now - last >= after:
                log.info("gateway: %s idle for %ds: scaling to zero", route.name, now - last)
                await sync_to_async(_scale, thread_sensitive=False)(
                    route.deployment_ids, 0, only_from=None)
                route.desired = 0

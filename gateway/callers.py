"""Who is calling: a gateway key of the deployment's team (``hgk_…``, maybe
scoped to some of its agents, with its own limits) or a Hangar API token of
the team (``hgr_…``, the gateway's default limits).

A bearer is checked against the database once, then remembered for
``HANGAR_GATEWAY_AUTH_TTL_S`` seconds (a revoked or expired token is refused
within that time), so proxied requests do not query the database. Concurrent
requests with a bearer not yet known wait on one lookup (not one each: a burst
of a hundred new connections made a hundred queries), and a bearer in steady use
is checked again in the background once half its time has passed, so no request
waits on the database while its caller keeps calling.
"""
from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass

from asgiref.sync import sync_to_async
from django.db import close_old_connections

from deployments import actions

from . import conf
from .actions import authenticate_key


@dataclass(frozen=True)
class Caller:
    ident: str  # what limits and runs are keyed by ("token:<prefix>")
    team_id: int
    agents: frozenset[str] | None = None  # agent slugs it may call (None: all of its team)
    rate_per_s: int | None = None
    concurrent: int | None = None

    def may_call(self, team_id: int, agent: str) -> bool:
        return team_id == self.team_id and (self.agents is None or agent in self.agents)


def _lookup(raw: str) -> Caller | None:
    close_old_connections()
    key = authenticate_key(raw)
    if key is not None:
        return Caller(ident=f"key:{key.prefix}", team_id=key.team_id,
                      agents=frozenset(key.agents) if key.agents else None,
                      rate_per_s=key.rate_per_s or conf.RATE_PER_S,
                      concurrent=key.concurrent or conf.CONCURRENT)
    token = actions.authenticate_token(raw)
    if token is None:
        return None
    return Caller(ident=f"token:{token.prefix}", team_id=token.team_id,
                  rate_per_s=conf.RATE_PER_S,
                  concurrent=conf.CONCURRENT)


class Callers:
    def __init__(self, ttl_s: float | None = None, maxsize: int = 10_000):
        self.ttl_s = conf.AUTH_TTL_S if ttl_s is None else ttl_s
        self.maxsize = maxsize
        # digest → (the caller or None, monotonic time it was checked)
        self.known: dict[str, tuple[Caller | None, float]] = {}
        self.lookups: dict[str, asyncio.Future] = {}  # digest → the lookup in flight

    async def authenticate(self, headers: dict[str, str]) -> Caller | None:
        value = headers.get("authorization", "")
        scheme, _, raw = value.partition(" ")
        raw = raw.strip()
        if scheme.lower() != "bearer" or not raw:
            return None
        digest = hashlib.sha256(raw.encode()).hexdigest()
        found = self.known.get(digest)
        if found is not None:
            age = time.monotonic() - found[1]
            if age < self.ttl_s:
                if age >= self.ttl_s / 2 and digest not in self.lookups:
                    self._lookup(digest, raw)  # check again, meanwhile serve what we know
                return found[0]
        lookup = self.lookups.get(digest) or self._lookup(digest, raw)
        return await asyncio.shield(lookup)

    def _lookup(self, digest: str, raw: str) -> asyncio.Future:
        async def run() -> Caller | None:
            try:
                caller = await sync_to_async(_lookup, thread_sensitive=False)(raw)
                if len(self.known) >= self.maxsize:
                    self._forget()
                self.known[digest] = (caller, time.monotonic())
                return caller
            finally:
                self.lookups.pop(digest, None)

        future = self.lookups[digest] = asyncio.ensure_future(run())
        future.add_done_callback(lambda f: f.cancelled() or f.exception())  # no warning
        return future

    def _forget(self) -> None:
        """Drop what is out of date (all of it if nothing is: a flood of bad bearers)."""
        now = time.monotonic()
        self.known = {d: v for d, v in self.known.items() if now - v[1] < self.ttl_s}
        if len(self.known) >= self.maxsize:
            self.known.clear()

"""The gateway's in-memory table: what each ``/gw/<team>/<agent>/<env>/`` serves.

Loaded from the database in one pass (``load``), off the request path; the
table is replaced whole, while each replica's counters (``balancer.Replica``)
live on across loads so in-flight counts survive a refresh.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from deployments.models import Deployment, DeploymentState, Health, Instance, InstancePhase
from deployments.patterns import get_pattern
from rollouts.engine import weights as rollout_weights

from .balancer import Replica
from .split import Weighted

RouteKey = tuple[str, str, str]  # team slug, agent slug, environment
# Seconds a replica the gateway found ready itself (``Table.admit``) is served
# before the control plane says so too (its settle loop takes ~0.1 s; this
# covers a slow worker, not a replica that never gets marked ready).
ADMIT_GRACE_S = 15.0


@dataclass
class Route:
    """One agent in one environment, over all of its deployments (targets)."""

    key: RouteKey
    team_id: int
    deployment_ids: list[int]
    refusal: str = ""  # why the gateway does not serve it (409), empty when it does
    request_timeout_s: float = 15 * 60
    concurrency: int | None = None  # per replica
    scale_to_zero_after_s: int | None = None  # opt-in (None: never at zero by the gateway)
    cold_start_wait_s: float = 120
    desired: int = 0  # replicas its deployments want, summed
    replicas: list[Replica] = field(default_factory=list)
    # deployment id → (agent id, version id): what its run records are filed under
    owners: dict[int, tuple[int, int]] = field(default_factory=dict)
    # A rollout's split (#15): revision id → weight, the preview revision, the counter.
    weights: dict[int, int] = field(default_factory=dict)
    preview: int | None = None
    weighted: Weighted | None = None

    @property
    def name(self) -> str:
        return "/".join(self.key)

    @property
    def deployment_limit(self) -> int | None:
        """In-flight requests the whole deployment takes (concurrency × replicas)."""
        if self.concurrency is None:
            return None
        return self.concurrency * max(1, len(self.replicas))


class Table:
    """Routes by key plus the replica states kept between loads."""

    def __init__(self):
        self.routes: dict[RouteKey, Route] = {}
        self.states: dict[tuple[int, str, str], Replica] = {}
        self.team_ids: set[int] = set()
        # Replicas no longer ready whose in-flight requests are finishing (drain).
        self.leaving: list[Replica] = []
        # Requests held at zero replicas wait on these (set once the route has one).
        self.waiting: dict[RouteKey, asyncio.Event] = {}
        # Replicas found ready by the gateway's own probe (``admit``), not yet by a
        # table read: replica ident → (route key, served until, monotonic).
        self.admitted: dict[tuple[int, str, str], tuple[RouteKey, float]] = {}

    def get(self, key: RouteKey) -> Route | None:
        return self.routes.get(key)

    def replace(self, rows: list[tuple]) -> None:
        """Install what ``load`` read (runs on the event loop: no I/O)."""
        routes: dict[RouteKey, Route] = {}
        states: dict[tuple[int, str, str], Replica] = {}
        for route, instances in rows:
            existing = routes.get(route.key)
            if existing is not None:  # another target of the same agent and environment
                existing.deployment_ids += route.deployment_ids
                existing.owners.update(route.owners)
                existing.desired += route.desired
                existing.refusal = existing.refusal and route.refusal
                existing.weights.update(route.weights)
                existing.preview = existing.preview or route.preview
                route = existing
            else:
                routes[route.key] = route
            for deployment_id, name, address, *revision in instances:
                ident = (deployment_id, name, address)
                state = self.states.get(ident) or Replica(name=name, address=address,
                                                          deployment_id=deployment_id)
                state.revision_id = revision[0] if revision else None
                states[ident] = state
                route.replicas.append(state)
        now = time.monotonic()
        for ident, (key, until) in list(self.admitted.items()):
            route, state = routes.get(key), self.states.get(ident)
            if ident in states or until < now or route is None or not route.desired \
                    or state is None:
                del self.admitted[ident]  # read as ready now, or no longer wanted
                continue
            states[ident] = state
            route.replicas.append(state)
        leaving = [s for s in self.leaving if s.outstanding > 0]
        for ident, state in self.states.items():
            if ident not in states:
                state.remove()  # in-flight requests finish; no new ones
                leaving.append(state)
        for key, route in routes.items():  # the split's counters live on while it holds
            old = self.routes.get(key)
            if route.weights:
                route.weighted = old.weighted if old is not None and old.weighted is not None \
                    and old.weighted.key == Weighted(route.weights).key else \
                    Weighted(route.weights)
        self.routes, self.states, self.leaving = routes, states, leaving
        self.team_ids = {r.team_id for r in routes.values()}
        for key in [k for k, r in routes.items() if r.replicas and k in self.waiting]:
            self.waiting.pop(key).set()

    def admit(self, key: RouteKey, deployment_id: int, name: str, address: str,
              revision_id: int | None) -> None:
        """Serve a starting replica of ``key`` that answered its readiness probe
        (the gateway's own, ``zero``) before the control plane marks it ready;
        requests held for the route go to it at once."""
        route = self.routes.get(key)
        if route is None:
            return
        ident = (deployment_id, name, address)
        state = self.states.get(ident) or Replica(name=name, address=address,
                                                  deployment_id=deployment_id)
        state.revision_id = revision_id
        self.states[ident] = state
        if state not in route.replicas:
            route.replicas.append(state)
        self.admitted[ident] = (key, time.monotonic() + ADMIT_GRACE_S)
        if key in self.waiting:
            self.waiting.pop(key).set()

    def ready_event(self, key: RouteKey) -> asyncio.Event:
        """Set when the route next has a ready replica."""
        return self.waiting.setdefault(key, asyncio.Event())


def load() -> list[tuple[Route, list[tuple[int, str, str]]]]:
    """Every deployment with its ready instances (sync: call it in a thread)."""
    ready: dict[int, list[tuple]] = {}
    for deployment_id, name, address, revision_id in (
            Instance.objects.filter(phase=InstancePhase.RUNNING, health=Health.HEALTHY,
                                    deployment__state=DeploymentState.ACTIVE)
            .exclude(address="").order_by("deployment_id", "name")
            .values_list("deployment_id", "name", "address", "revision_id")):
        ready.setdefault(deployment_id, []).append((deployment_id, name, address, revision_id))
    splits = rollout_weights()
    rows = []
    for d in Deployment.objects.select_related("agent__team", "version").order_by("pk"):
        options = get_pattern(d.agent.pattern).gateway(d.version)
        key = (d.agent.team.slug, d.agent.slug, d.environment)
        owners = {d.pk: (d.agent_id, d.version_id)}
        if options is None:
            route = Route(key=key, team_id=d.agent.team_id, deployment_ids=[d.pk], owners=owners,
                          refusal=f"{d.agent.slug}@{d.environment} is a {d.agent.pattern} "
                                  "deployment; the gateway serves real-time deployments only")
            rows.append((route, []))
            continue
        route = Route(key=key, team_id=d.agent.team_id, deployment_ids=[d.pk], owners=owners,
                      request_timeout_s=options.request_timeout_s,
                      concurrency=options.concurrency,
                      scale_to_zero_after_s=options.scale_to_zero_after_s,
                      cold_start_wait_s=options.cold_start_wait_s,
                      desired=d.replicas if d.state == DeploymentState.ACTIVE else 0)
        route.weights, route.preview = splits.get(d.pk, ({}, None))
        route.weights = dict(route.weights)
        rows.append((route, ready.get(d.pk, [])))
    return rows

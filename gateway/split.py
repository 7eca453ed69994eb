"""Traffic split during a rollout (#15): which revision's replicas a request
may go to, exact to the weight, in memory only.

The weights come with the table (``routes.load`` reads them from
``rollouts.engine.weights`` in the same pass as the endpoints). Per route, a
smooth weighted round robin (nginx's) picks the revision: over every
``sum(weights)`` requests each revision gets exactly its weight, spread out
(10 % → one request in ten, never two in a row) — not a random draw whose
share drifts. A revision with no available replica is skipped for that
request (its share goes to the others), so an aborted or still-starting
canary never fails a request. The counters survive table reloads while the
weights stay the same.

Blue-green's preview revision answers only on ``/gw/<team>/<agent>/<env>/preview/…``.

A thread stays on its revision while a canary splits: a request naming a
thread — a LangGraph thread's runs (``threads/`` under ``/lg/<team>/``), or a
``/gw/`` request with one of ``THREAD_HEADERS`` — goes to the revision that
served the thread's first request in this rollout, whatever the weight does
meanwhile, until the rollout finishes (the weights name one revision again:
promoted or aborted) or that revision has no replica left. Pinned requests
do not move the round robin, so the weight stays exact over the choices
made (new threads and requests without a thread). The pins are this
process's memory (bounded, least recently used dropped first); with several
gateway processes, a load balancer sticky on the same header keeps a thread
on one of them.
"""
from __future__ import annotations

import time

from cachetools import LRUCache

from .balancer import Replica

PREVIEW = "/preview"
# A /gw/ request's thread (or session): the first of these headers it carries.
THREAD_HEADERS = ("x-hangar-thread", "x-thread-id", "x-session-id")
PINS_MAX = 100_000  # threads remembered per route during a rollout


class Weighted:
    """Smooth weighted round robin over revision ids."""

    def __init__(self, weights: dict[int, int]):
        self.weights = {r: w for r, w in weights.items() if w > 0}
        self.current = dict.fromkeys(self.weights, 0)
        # Every revision the rollout moves between (at 0 % too): while there
        # are two, threads stay where they started.
        self.members = frozenset(weights)

    @property
    def key(self) -> tuple:
        return tuple(sorted(self.weights.items()))

    def choose(self, available: set[int]) -> int | None:
        live = [r for r in self.weights if r in available]
        if not live:
            return None
        total = sum(self.weights[r] for r in live)
        for r in live:
            self.current[r] += self.weights[r]
        best = max(live, key=lambda r: (self.current[r], -r))
        self.current[best] -= total
        return best


class Pins:
    """Thread → revision for one route during one rollout (its two revisions)."""

    def __init__(self, members: frozenset):
        self.members = members
        self.revisions: LRUCache = LRUCache(maxsize=PINS_MAX)


_pins: dict[tuple, Pins] = {}


def pins(route) -> Pins | None:
    """The route's pins while a rollout splits it between two revisions; a
    rollout that ended (or another one) forgets the old pins."""
    weighted = route.weighted
    if weighted is None or len(weighted.members) < 2:
        _pins.pop(route.key, None)
        return None
    held = _pins.get(route.key)
    if held is None or held.members != weighted.members:
        held = _pins[route.key] = Pins(weighted.members)
    return held


def thread_of(headers: dict[str, str]) -> str | None:
    """The thread (or session) a /gw/ request names, if any."""
    for name in THREAD_HEADERS:
        value = headers.get(name, "").strip()
        if value:
            return value[:200]
    return None


def pool(route, *, preview: bool = False, thread: str | None = None) -> list[Replica]:
    """The replicas this request may use: the preview's (preview URL), or the
    revision ``thread`` is pinned to, or the revision the weights pick, or
    all of them when no rollout splits."""
    if preview:
        return [r for r in route.replicas if route.preview is not None
                and r.revision_id == route.preview]
    weighted = route.weighted
    if weighted is None:
        _pins.pop(route.key, None)
        return route.replicas
    now = time.monotonic()
    available = {r.revision_id for r in route.replicas if r.available(now)}
    held = pins(route) if thread else None
    if held is not None:
        pinned = held.revisions.get(thread)
        if pinned in available:
            return [r for r in route.replicas if r.revision_id == pinned]
        if pinned is not None and any(r.revision_id == pinned for r in route.replicas):
            # Its replicas are all busy failing or draining: this request goes
            # elsewhere, the thread stays pinned.
            held = None
    revision = weighted.choose(available)
    if held is not None and revision is not None:
        held.revisions[thread] = revision
    if revision is None:
        # Nothing the weights name is up: keep serving with what is (never the preview).
        return [r for r in route.replicas if r.revision_id != route.preview]
    return [r for r in route.replicas if r.revision_id == revision]


def preview_path(rest: str) -> tuple[bool, str]:
    """(is this a preview request, the path the agent gets)."""
    if rest == PREVIEW or rest.startswith(PREVIEW + "/"):
        return True, rest[len(PREVIEW):] or "/"
    return False, rest

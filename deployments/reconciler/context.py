"""What one reconcile pass knows and collects: the deployment, its pattern,
its targets and drivers, timeline events, and when it wants to run again."""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from itertools import zip_longest
from typing import Any, TypeVar

from django.db import connections
from django.utils import timezone

from .. import revisions
from ..models import AgentVersion, Deployment, DeploymentEvent, Instance, Target
from ..patterns import Pattern, get_pattern
from ..runtimes import RuntimeFailure, get_driver
from ..runtimes.base import Runtime
from ..traffic import Split

log = logging.getLogger("deployments.reconciler")
PARALLEL_PER_TARGET = 4  # concurrent driver calls per target (a daemon serialises some)
PARALLEL_MAX = 16

# What the instance tables show (a pass that changes none sends no event).
SEEN_FIELDS = ("name", "phase", "health", "health_reason", "host", "restarts", "version_id",
               "revision_id")

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Outcome:
    """What a pass ended with: a word for logs and tests (a health, "busy" or
    "gone") and when it wants another pass (the task reschedules)."""

    word: str
    requeue_in: float | None = None

    def sooner(self, seconds: float | None) -> Outcome:
        if seconds is None:
            return self
        wanted = seconds if self.requeue_in is None else min(self.requeue_in, seconds)
        return Outcome(self.word, wanted)


@dataclass
class Pass:
    deployment: Deployment
    pattern: Pattern
    targets: dict[int, Target]
    drivers: dict[int, Runtime] = field(default_factory=dict)
    unreachable: dict[int, str] = field(default_factory=dict)  # target id -> why
    now: datetime = field(default_factory=timezone.now)
    events: list[DeploymentEvent] = field(default_factory=list)
    requeue_in: float | None = None
    split: Split | None = None  # a rollout in charge of what runs (deployments.traffic)

    @classmethod
    def open(cls, deployment: Deployment, targets: list[Target]) -> Pass:
        revisions.desired(deployment)  # made here for versions set outside the verbs
        run = cls(deployment=deployment, pattern=get_pattern(deployment.agent.pattern),
                  targets={t.pk: t for t in targets})
        for target in targets:
            try:
                run.drivers[target.pk] = get_driver(target)
            except RuntimeFailure as exc:
                run.unreachable[target.pk] = str(exc)
        return run

    @property
    def primary(self) -> Runtime | None:
        return self.drivers.get(self.deployment.target_id)

    def reachable(self) -> list[int]:
        return [t for t in self.drivers if t not in self.unreachable]

    def target_name(self, target_id: int | None) -> str:
        target = self.targets.get(target_id) if target_id else None
        return (target or self.deployment.target).name

    # What instances should run (the revision seam) -------------------------------
    def is_current(self, row: Instance) -> bool:
        """Whether ``row`` runs the deployment's current revision and was
        created after its last restart (else the rollout replaces it), or
        runs a revision a rollout keeps (``split``)."""
        if self.split is not None and row.revision_id in self.split.others:
            return True
        return not revisions.outdated(row, self.deployment)

    def replaced_because(self, old: list[Instance]) -> str:
        d = self.deployment
        if all(r.revision_id == d.revision_id for r in old):
            return "restarted"
        return f"replaced by revision {d.revision.number} (v{d.version.number})"

    def new_row_fields(self) -> dict[str, Any]:
        return {"version": self.deployment.version, "revision": self.deployment.revision}

    def adopted_fields(self, version_label: str, versions: dict[str, AgentVersion]
                       ) -> dict[str, Any]:
        """What an adopted runtime object (labelled with a version number) runs."""
        return {"version": versions.get(version_label),
                "revision": revisions.for_version(self.deployment, version_label)}

    def version_of(self, row: Instance) -> AgentVersion:
        return row.version or self.deployment.version

    # Collecting ------------------------------------------------------------------
    def event(self, reason: str, message: str, *, instance: str = "",
              warning: bool = False) -> None:
        self.events.append(DeploymentEvent(
            deployment_id=self.deployment.pk, reason=reason, message=message[:1000],
            instance=instance, type="Warning" if warning else "Normal"))
        log.info("deployment %s: %s %s", self.deployment.pk, reason, message)

    def requeue(self, seconds: float | None) -> None:
        if seconds is None:
            return
        self.requeue_in = seconds if self.requeue_in is None else min(self.requeue_in, seconds)

    # Concurrency -----------------------------------------------------------------
    def in_parallel(self, work: Iterable[T], fn: Callable[[T], R],
                    target_of: Callable[[T], Any]) -> list[R]:
        """``fn`` over ``work`` in threads: different targets at once, and up to
        PARALLEL_PER_TARGET calls per target. ``fn`` must not touch the
        database (each thread's connection is closed anyway, so none leaks
        out of the pool)."""
        items = list(work)
        if not items:
            return []
        if len(items) == 1:
            return [fn(items[0])]
        per_target = len({target_of(item) for item in items})
        workers = min(len(items), PARALLEL_MAX, PARALLEL_PER_TARGET * per_target)

        def call(item: T) -> R:
            try:
                return fn(item)
            finally:
                connections.close_all()

        # Round-robin over targets, so every target's calls start at once.
        queues: dict[Any, list[int]] = {}
        for index, item in enumerate(items):
            queues.setdefault(target_of(item), []).append(index)
        order = [i for batch in zip_longest(*queues.values()) for i in batch if i is not None]
        results: list[Any] = [None] * len(items)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="reconcile") as pool:
            for index, result in zip(order, pool.map(call, [items[i] for i in order]),
                                     strict=True):
                results[index] = result
        return results

"""What a supervision pass works with: the :class:`Supervisor` that outlives
passes (drivers and their connections, the pool of driver calls, starts and
removals in flight) and the :class:`Pass` itself (listings, limits, what to
do after commit). The steps are in :mod:`.supervisor`."""
from __future__ import annotations

import hashlib
import json
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime

from ..runtimes import RuntimeFailure, get_driver
from ..runtimes.base import JobState
from . import outcome

PARALLEL = 8  # driver calls (starts, log reads, removals) in flight at once


class Supervisor:
    """What outlives a pass: the drivers of the targets seen (a driver holds
    its connection), the pool of driver calls, and the starts and removals in
    flight (see the module docstring)."""

    def __init__(self, parallel: int = PARALLEL):
        self.pool = ThreadPoolExecutor(parallel, thread_name_prefix="batch-supervisor")
        self.drivers: dict = {}  # target id -> (its connection's digest, driver)
        self.launched: dict[int, tuple] = {}  # run id -> (target, deployment id, unit, future)
        self.removing: dict[tuple, Future] = {}  # (target id, deployment id, unit) -> future

    def driver(self, target):
        """The target's driver, made again when its connection settings changed."""
        digest = hashlib.sha256(json.dumps([target.kind, target.connection], sort_keys=True,
                                           default=str).encode()).hexdigest()
        known = self.drivers.get(target.pk)
        if known is None or known[0] != digest:
            known = self.drivers[target.pk] = (digest, get_driver(target))
        return known[1]

    def remove(self, target, deployment_id: int, name: str) -> None:
        key = (target.pk, deployment_id, name)
        if key not in self.removing:
            self.removing[key] = self.pool.submit(self.driver(target).remove_job,
                                                  deployment_id, name)

    def reap(self) -> None:
        """Forget removals that are done (best effort: a failed one is found
        again by a later pass's collection)."""
        for key in [key for key, future in self.removing.items() if future.done()]:
            del self.removing[key]

    def drain(self) -> None:
        """Wait for the removals in flight (starts are settled by a pass)."""
        for future in self.removing.values():
            try:
                future.result()
            except RuntimeFailure:
                continue
        self.removing.clear()

    def close(self) -> None:
        self.drain()
        for _, future in list(self.launched.values()):
            future.exception()
        self.pool.shutdown(wait=True, cancel_futures=True)


@dataclass
class Pass:
    now: datetime
    sup: Supervisor = field(default_factory=Supervisor)
    listings: dict = field(default_factory=dict)  # (target, deployment) -> {name: JobState}
    unreachable: dict = field(default_factory=dict)  # target id -> why
    limits: dict = field(default_factory=dict)  # team id -> concurrent jobs allowed
    full: set = field(default_factory=set)  # deployments at their job limit in this pass
    removals: list = field(default_factory=list)  # (target, deployment id, unit) after commit
    starts: list = field(default_factory=list)  # (run id, target, spec, timeout) after commit
    again: list = field(default_factory=list)  # run ids to step again in this pass
    slots: dict = field(default_factory=dict)  # deployment id -> running jobs (slots locked)
    prune: dict = field(default_factory=dict)  # schedule id -> schedule, history to prune
    logs: dict = field(default_factory=dict)  # (target, deployment, unit) -> future of its log
    started: int = 0
    finished: int = 0

    def driver(self, target):
        return self.sup.driver(target)

    def listing(self, target, deployment_id: int) -> dict[str, JobState] | None:
        key = (target.pk, deployment_id)
        if key not in self.listings:
            driver = self.driver(target)
            try:
                listing = self.listings[key] = driver.list_jobs(deployment_id)
            except RuntimeFailure as failure:
                self.unreachable[target.pk] = str(failure)
                self.listings[key] = None
                return None
            for name in [name for name in listing
                         if (target.pk, deployment_id, name) in self.sup.removing]:
                del listing[name]  # its run has finished: it is on its way out
            for name, state in listing.items():  # read finished jobs' logs in parallel
                if state.phase == "exited" and (target.pk, deployment_id, name) not in self.logs:
                    self.logs[target.pk, deployment_id, name] = self.sup.pool.submit(
                        driver.job_logs, deployment_id, name, tail=outcome.LOG_TAIL_LINES)
        return self.listings[key]

    def relist(self, target, deployment_id: int) -> dict[str, JobState]:
        """A fresh listing (the cached one may predate a start by another worker)."""
        self.listings.pop((target.pk, deployment_id), None)
        return self.listing(target, deployment_id) or {}

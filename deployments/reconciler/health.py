"""Health: probe the live instances (concurrently), judge each by the
driver's own verdict and the pattern's rules, roll the deployment up and write
its health with a human reason (observed_generation by compare-and-set)."""
from __future__ import annotations

import copy
import dataclasses
import time

from django.conf import settings
from django.utils import timezone

from .. import events, traffic
from ..autoscaling import get_signal
from ..models import HEALTH_SEVERITY, Deployment, Health, Instance, InstancePhase
from ..patterns import Verdict
from ..runtimes import RuntimeFailure
from ..runtimes.base import Judgement, ObservedInstance
from . import samples
from .context import Pass
from .observe import Observed
from .specs import health_check, progress_deadline

PROBED_FIELDS = ["phase", "health", "health_reason", "ready_at", "inflight", "cpu_percent",
                 "memory_bytes", "updated_at"]


def probe(run: Pass, rows: list[Instance], observed: Observed) -> list[Instance]:
    d = run.deployment
    live = [r for r in rows if r.phase in (InstancePhase.STARTING, InstancePhase.RUNNING)
            and r.target_id not in run.unreachable]
    signal = get_signal(run.pattern.autoscaling_signal(d))
    want_usage = (signal is not None and signal.needs_usage) or (
        d.health == Health.HEALTHY and samples.due(run))
    checks = {r.pk: health_check(run.version_of(r)) for r in live}  # read here, not in threads

    def look(row: Instance):
        driver = run.drivers[row.target_id]
        item = observed.get(row.name, (None, None))[1] or ObservedInstance(
            name=row.name, runtime_id=row.runtime_id, generation=row.generation,
            phase="running", address=row.address)
        verdict = driver.judge(item)
        result = None
        if not verdict.health and driver.features.supports_health_probe:
            result = driver.probe(item, checks[row.pk])
        usage = None
        if want_usage and driver.features.supports_resource_usage:
            try:
                usage = driver.usage(d.pk, row.name)
            except RuntimeFailure:
                usage = None
        return row, verdict, result, usage

    starting: list[tuple[Instance, ObservedInstance]] = []
    for row, verdict, result, usage in run.in_parallel(live, look, lambda r: r.target_id):
        judge(run, row, verdict, result)
        if usage is not None:
            row.cpu_percent, row.memory_bytes = usage.cpu_percent, usage.memory_bytes
        row.save(update_fields=PROBED_FIELDS)
        if result is not None and not result.ready and row.health == Health.PROGRESSING:
            starting.append((row, observed.get(row.name, (None, None))[1]))
    if starting:
        settle(run, rows, starting, checks)
    for row in rows:
        if row.target_id in run.unreachable and row.health != Health.UNKNOWN:
            row.health, row.health_reason = Health.UNKNOWN, run.unreachable[row.target_id]
            row.save(update_fields=["health", "health_reason", "updated_at"])
    return rows


def settle(run: Pass, rows: list[Instance],
           starting: list[tuple[Instance, ObservedInstance | None]], checks: dict) -> None:
    """Watch instances that are starting for a few seconds more in this pass,
    probing only them every ``HANGAR_SETTLE_INTERVAL`` seconds: a replica is
    marked ready within that interval of answering its readiness probe,
    without a whole pass (runtime listings, every probe, the roll-up) per look.
    Each change is written and published (instances and the roll-up) as it
    happens. Stops early when the deployment changes, so a new spec is not kept
    waiting; an instance that exits meanwhile is seen by the next pass."""
    d = run.deployment
    budget = settings.HANGAR_SETTLE_SECONDS
    interval = settings.HANGAR_SETTLE_INTERVAL
    deadline = time.monotonic() + budget
    waiting = [(row, item or ObservedInstance(
        name=row.name, runtime_id=row.runtime_id, generation=row.generation,
        phase="running", address=row.address)) for row, item in starting]
    while waiting and time.monotonic() < deadline:
        time.sleep(interval)
        if not Deployment.objects.filter(pk=d.pk, generation=d.generation,
                                         state=d.state).exists():
            return  # changed (or gone): the next pass reads the new spec

        def look(pair):
            row, item = pair
            return row, item, run.drivers[row.target_id].probe(item, checks[row.pk])

        run.now = timezone.now()
        still, changed = [], False
        for row, item, result in run.in_parallel(waiting, look, lambda p: p[0].target_id):
            was = (row.health, row.health_reason)
            judge(run, row, Judgement(), result)
            if (row.health, row.health_reason) != was:
                row.save(update_fields=PROBED_FIELDS)
                changed = True
            if row.health == Health.PROGRESSING:
                still.append((row, item))
        if changed:
            events.publish(d.agent.team_id, "instances", {}, deployment_id=d.pk)
            rollup(run, rows)
        waiting = still


def judge(run: Pass, row: Instance, runtime: Judgement, result) -> None:
    """One instance's health from the runtime's verdict and the probe."""
    now = run.now
    age = (now - row.started_at).total_seconds() if row.started_at else 0
    row.inflight = result.inflight if result is not None else None
    verdict = run.pattern.instance_health(
        runtime=runtime, probe=result, age_s=age,
        deadline_s=progress_deadline(run.version_of(row)))
    was = row.health
    row.health, row.health_reason = verdict.health, verdict.reason
    if verdict.health == Health.HEALTHY:
        row.phase = InstancePhase.RUNNING
        if row.ready_at is None:
            row.ready_at = now
    run.requeue(verdict.requeue_in)
    if row.health != was and row.health in (Health.HEALTHY, Health.DEGRADED):
        run.event("Ready" if row.health == Health.HEALTHY else "Unhealthy",
                  f"{row.name}: {row.health_reason or 'ready'}", instance=row.name,
                  warning=row.health == Health.DEGRADED)


def rollup(run: Pass, rows: list[Instance]) -> str:
    every_target_down = run.unreachable and len(run.unreachable) == len(run.targets)
    unreachable = {run.targets[t].name: why for t, why in run.unreachable.items()} \
        if every_target_down else {}
    deployment, split = run.deployment, run.split
    if split is not None:  # a rollout runs more (or fewer) than the replicas asked for
        deployment = copy.copy(deployment)
        deployment.replicas = split.total
    verdict = run.pattern.rollup(deployment, rows, is_current=run.is_current,
                                 unreachable=unreachable)
    if split is not None and split.reason:
        worse = split.health if split.health and HEALTH_SEVERITY.index(split.health) < \
            HEALTH_SEVERITY.index(verdict.health) else verdict.health
        verdict = dataclasses.replace(verdict, health=worse,
                                      reason=f"{split.reason}; {verdict.reason}")
    return write(run, verdict)


def write(run: Pass, verdict: Verdict) -> str:
    d = run.deployment
    samples.record(run)
    run.requeue(verdict.requeue_in)
    health, reason = verdict.health, verdict.reason[:500]
    fields = {"health": health, "health_reason": reason, "reconciled_at": timezone.now()}
    if verdict.converged:
        fields["observed_generation"] = d.generation
    changed = (d.health, d.health_reason) != (health, reason)
    # Only write observed_generation for the generation we read (compare-and-set).
    Deployment.objects.filter(pk=d.pk, generation=d.generation).update(**fields)
    if changed:
        if d.health != health:
            run.event("Health", f"{d.health} → {health}: {verdict.reason}",
                      warning=health in (Health.DEGRADED, Health.MISSING))
            traffic.health_changed(d, d.health, health, verdict.reason)
        events.publish(d.agent.team_id, "deployment.health", {
            "health": health, "reason": verdict.reason, "replicas": d.replicas},
            deployment_id=d.pk)
        d.health, d.health_reason = health, reason  # a pass may write more than once
    return health

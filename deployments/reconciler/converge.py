"""Converge: from the rows that mirror what runs to what the pattern wants —
replace what is not current (rolling or recreate), scale up and down, and
launch every instance that should run, concurrently across and within
targets."""
from __future__ import annotations

from .. import drain, traffic
from ..models import Health, Instance, InstancePhase, Revision, RolloutStrategy
from ..runtimes import RuntimeFailure
from . import restarts
from .context import Pass
from .observe import apply_observation
from .placement import create_rows
from .specs import instance_spec


def removal_order(row: Instance):
    """Remove broken instances first, then the newest."""
    rank = {Health.DEGRADED: 0, Health.MISSING: 0, Health.UNKNOWN: 1, Health.PROGRESSING: 2}
    return (rank.get(row.health, 3), -(row.created_at.timestamp()))


def converge(run: Pass, rows: list[Instance], desired: int) -> list[Instance]:
    d = run.deployment
    run.split = traffic.split_for(d, desired)
    if run.split is not None:
        return converge_split(run, rows, run.split)
    current = [r for r in rows if run.is_current(r)]
    old = [r for r in rows if not run.is_current(r)]
    if old:
        why = run.replaced_because(old)
        if d.rollout_strategy == RolloutStrategy.RECREATE:
            rows = remove(run, rows, old, why)
        else:
            ready_new = sum(1 for r in current if r.health == Health.HEALTHY)
            keep = max(0, desired - ready_new)
            doomed = sorted(old, key=removal_order)[: max(0, len(old) - keep)]
            rows = remove(run, rows, doomed, why)
        current = [r for r in rows if run.is_current(r)]
    if len(current) > desired:
        doomed = sorted(current, key=removal_order)[: len(current) - desired]
        rows = remove(run, rows, doomed, f"scaled down to {desired}")
    elif len(current) < desired:
        rows = rows + create_rows(run, desired - len(current), rows)
    launch(run, rows)
    return rows


def converge_split(run: Pass, rows: list[Instance], split: traffic.Split) -> list[Instance]:
    """A rollout is in charge (``deployments.traffic``): run ``split.current``
    instances of the current revision and ``split.others[r]`` of each revision
    ``r`` it keeps; remove everything else."""
    d = run.deployment
    run.requeue(split.requeue_in)
    kept = {r.pk: r for r in Revision.objects.select_related("version")
            .filter(deployment=d, pk__in=list(split.others))}
    wanted = {d.revision_id: split.current, **{pk: n for pk, n in split.others.items()
                                              if pk in kept}}
    groups: dict[int, list[Instance]] = {pk: [] for pk in wanted}
    strays = []
    for row in rows:
        if row.revision_id == d.revision_id and not run.is_current(row):
            strays.append(row)  # created before a restart
        elif row.revision_id in groups:
            groups[row.revision_id].append(row)
        else:
            strays.append(row)
    if strays:
        rows = remove(run, rows, strays, run.replaced_because(strays))
    for pk, want in wanted.items():
        have = [r for r in rows if r.revision_id == pk and r not in strays]
        number = d.revision.number if pk == d.revision_id else kept[pk].number
        if len(have) > want:
            doomed = sorted(have, key=removal_order)[: len(have) - want]
            rows = remove(run, rows, doomed, f"rollout: revision {number} down to {want}")
        elif len(have) < want:
            fields = None if pk == d.revision_id else {"version": kept[pk].version or d.version,
                                                       "revision": kept[pk]}
            rows = rows + create_rows(run, want - len(have), rows, fields)
    launch(run, rows)
    return rows


def launch(run: Pass, rows: list[Instance]) -> None:
    """Create or start every instance that should run: new and lost ones, and
    exited ones whose restart is due. Specs are built here (they read the
    database); the driver calls run in threads."""
    todo = []
    for row in rows:
        if row.target_id in run.unreachable:
            continue
        if row.phase in (InstancePhase.PENDING, InstancePhase.LOST):
            todo.append(row)
        elif row.phase == InstancePhase.EXITED and restarts.restart_due(run, row):
            todo.append(row)
    specs = {}
    for row in todo:
        try:
            specs[row.pk] = instance_spec(run.deployment, row)
        except RuntimeFailure as exc:
            restarts.failed(run, row, str(exc))
    work = [r for r in todo if r.pk in specs]

    def ensure(row: Instance):
        try:
            return row, run.drivers[row.target_id].ensure_instance(specs[row.pk]), None
        except RuntimeFailure as exc:
            return row, None, exc

    for row, item, error in run.in_parallel(work, ensure, lambda r: r.target_id):
        restarting = row.phase == InstancePhase.EXITED
        if error is not None:
            if error.permanent:
                restarts.failed(run, row, str(error))
            else:
                row.health, row.health_reason = Health.PROGRESSING, f"retrying: {error}"
                row.save(update_fields=["health", "health_reason", "updated_at"])
                run.event("Retrying", f"{row.name}: {error}", instance=row.name, warning=True)
                run.requeue(5)
            continue
        if restarting:
            restarts.count_restart(run, row)
        elif row.phase == InstancePhase.LOST:
            row.restarts += 1
            run.event("Recreated", f"{row.name} re-created on {item.host}", instance=row.name)
        else:
            run.event("Created", f"{row.name} started on {item.host}"
                      + (f" at {item.address}" if item.address else ""), instance=row.name)
        row.phase = InstancePhase.STARTING
        row.ready_at = None
        apply_observation(row, item, save=False)
        row.save(update_fields=["runtime_id", "address", "host", "started_at", "exit_code",
                                "phase", "restarts", "restart_attempts", "next_restart_at",
                                "ready_at", "updated_at"])


def remove(run: Pass, rows: list[Instance], doomed: list[Instance], why: str) -> list[Instance]:
    """Remove ``doomed`` instances (concurrently); the rows that are left."""
    work = [r for r in doomed if r.target_id in run.drivers and r.target_id not in
            run.unreachable]
    # Graceful drain (#13): the gateway stops choosing these, their requests finish.
    if run.pattern.gateway(run.deployment.version) is not None:
        drain.before_remove(run.deployment, work)

    def stop(row: Instance):
        try:
            run.drivers[row.target_id].remove_instance(run.deployment.pk, row.name)
            return row, None
        except RuntimeFailure as exc:
            return row, exc

    gone = set()
    for row, error in run.in_parallel(work, stop, lambda r: r.target_id):
        if error is not None:
            run.event("Retrying", f"removing {row.name}: {error}", instance=row.name,
                      warning=True)
            continue
        row.delete()
        gone.add(row.name)
        run.event("Removed", f"{row.name} removed: {why}", instance=row.name)
    return [r for r in rows if r.name not in gone]

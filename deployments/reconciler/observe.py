"""Observe: list what every target runs for the deployment (by labels, in
parallel), and make the Instance rows mirror it — adopt labelled objects
without a row, update the rest, mark rows whose object vanished as lost."""
from __future__ import annotations

from django.db import IntegrityError, transaction

from ..models import Health, Instance, InstancePhase
from ..runtimes import RuntimeFailure
from ..runtimes.base import ObservedInstance
from .context import Pass

Observed = dict[str, tuple[int, ObservedInstance]]  # instance name -> (target id, what it is)


def observe(run: Pass) -> Observed:
    def listing(target_id: int):
        try:
            return target_id, run.drivers[target_id].list_instances(run.deployment.pk), None
        except RuntimeFailure as exc:
            return target_id, [], exc

    observed: Observed = {}
    for target_id, items, error in run.in_parallel(list(run.drivers), listing, lambda t: t):
        if error is not None:
            run.unreachable[target_id] = str(error)
        for item in items:
            observed[item.name] = (target_id, item)
    return observed


def sync(run: Pass, observed: Observed) -> list[Instance]:
    """Make rows mirror what exists: adopt, update, mark lost."""
    d = run.deployment
    rows = {r.name: r for r in Instance.objects.filter(deployment=d).select_related("version")}
    versions = None
    for name, (target_id, item) in observed.items():
        if name in rows:
            continue
        if versions is None:
            versions = {str(v.number): v for v in d.agent.versions.all()}
        row = Instance(deployment=d, name=name, target_id=target_id,
                       **run.adopted_fields(item.version, versions), generation=item.generation,
                       port=item.port, runtime_id=item.runtime_id,
                       phase=InstancePhase.STARTING, started_at=item.started_at or run.now)
        try:
            with transaction.atomic():
                row.save()
        except IntegrityError:
            row.port = None
            row.save()
        rows[name] = row
        run.event("Adopted", f"{name}: found on {run.targets[target_id].name} "
                  "with Hangar's labels; adopted", instance=name)
    for name, row in rows.items():
        if name in observed:
            apply_observation(row, observed[name][1])
        elif row.target_id in run.unreachable:
            continue
        elif row.runtime_id and row.phase not in (InstancePhase.FAILED, InstancePhase.LOST):
            row.phase, row.health = InstancePhase.LOST, Health.MISSING
            row.health_reason = "its runtime object disappeared"
            row.runtime_id = ""
            row.save(update_fields=["phase", "health", "health_reason", "runtime_id",
                                    "updated_at"])
            run.event("Lost", f"{name} disappeared from {run.target_name(row.target_id)}; "
                      "re-creating it", instance=name, warning=True)
    return list(rows.values())


FIELDS = ("runtime_id", "address", "host", "started_at", "exit_code", "phase")


def apply_observation(row: Instance, item: ObservedInstance, *, save: bool = True) -> None:
    before = tuple(getattr(row, f) for f in FIELDS)
    row.runtime_id = item.runtime_id
    row.address = item.address
    row.host = item.host
    row.started_at = item.started_at or row.started_at
    if item.phase in ("exited", "failed"):
        row.exit_code = item.exit_code
        if row.phase != InstancePhase.FAILED:
            row.phase = InstancePhase.EXITED
    elif item.phase == "running":
        if row.phase not in (InstancePhase.RUNNING, InstancePhase.STARTING):
            row.phase = InstancePhase.STARTING
        row.exit_code = None
    else:
        row.phase = InstancePhase.STARTING if item.phase == "starting" else row.phase
    if save and tuple(getattr(row, f) for f in FIELDS) != before:
        row.save(update_fields=[*FIELDS, "updated_at"])

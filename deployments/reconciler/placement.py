"""Where new instances go: the eligible targets (placement selector), spread
then least loaded, and a port per instance where the driver needs one.

Ports are unique per target (a database constraint) and, beyond that, per
*port space* — the driver says which targets share one (two Docker daemons on
one machine both publish on its loopback); the driver also says whether a
port is free there (binding only means something on this machine).
"""
from __future__ import annotations

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Count

from ..models import Deployment, Health, Instance, InstancePhase, Target
from ..runtimes import RuntimeFailure, get_driver
from .context import Pass


def eligible_targets(deployment: Deployment) -> list[Target]:
    return deployment.eligible_targets()


def create_rows(run: Pass, count: int, rows: list[Instance],
                fields: dict | None = None) -> list[Instance]:
    """Write-ahead: commit rows (name, target, port) before creating objects.
    ``fields`` (version, revision) default to the deployment's current ones."""
    placed = {tid: 0 for tid in run.reachable()}
    if not placed:
        return []
    for row in rows:
        if row.target_id in placed:
            placed[row.target_id] += 1
    load = dict(Instance.objects.filter(target_id__in=list(placed)).values("target_id")
                .annotate(n=Count("pk")).values_list("target_id", "n"))
    ports = PortBook(run) if run.deployment.version.port and run.primary.allocate_ports() \
        else None
    new_rows = []
    for _ in range(count):
        target_id = min(placed, key=lambda t: (placed[t], load.get(t, 0), run.targets[t].name))
        placed[target_id] += 1
        new_rows.append(_new_row(run, target_id, ports, fields))
    run.event("Scaled", f"creating {count} instance(s) to reach {run.deployment.replicas} "
              f"replica(s): {', '.join(r.name for r in new_rows)}")
    return new_rows


def _new_row(run: Pass, target_id: int, ports: PortBook | None,
             fields: dict | None = None) -> Instance:
    d = run.deployment
    for _attempt in range(50):
        port = ports.take(target_id) if ports else None
        row = Instance(deployment=d, target_id=target_id, **(fields or run.new_row_fields()),
                       generation=d.generation, port=port,
                       name=run.drivers[target_id].instance_name(d.agent.slug),
                       phase=InstancePhase.PENDING, health=Health.PROGRESSING,
                       health_reason="waiting to be created")
        try:
            with transaction.atomic():
                row.save()
            return row
        except IntegrityError:
            continue  # the port (or, rarely, the name) was taken meanwhile; the book knows
    raise RuntimeFailure("could not allocate a port for a new instance")


class PortBook:
    """Ports in use per port space, read once per pass."""

    def __init__(self, run: Pass):
        self.run = run
        self.space_of: dict[int, str] = {}  # target id -> port space
        for target in Target.objects.all():
            driver = run.drivers.get(target.pk)
            try:
                driver = driver or get_driver(target)
            except RuntimeFailure:
                continue
            if driver.allocate_ports():
                self.space_of[target.pk] = driver.port_space()
        self.used: dict[str, set[int]] = {}
        for target_id, port in Instance.objects.filter(
                port__isnull=False, target_id__in=list(self.space_of)).values_list(
                    "target_id", "port"):
            self.used.setdefault(self.space_of[target_id], set()).add(port)

    def take(self, target_id: int) -> int:
        space = self.space_of.get(target_id) or f"target:{target_id}"
        used = self.used.setdefault(space, set())
        driver = self.run.drivers[target_id]
        low, high = settings.HANGAR_PORT_RANGE
        for port in range(low, high):
            if port not in used:
                used.add(port)
                if driver.port_free(port):
                    return port
        raise RuntimeFailure("no free port left in HANGAR_PORT_RANGE")

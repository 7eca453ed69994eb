"""Chart samples: at most one point per SAMPLE_EVERY_S per deployment."""
from __future__ import annotations

from .. import events
from ..models import DeploymentSample, DeploymentState, Health, Instance
from .context import Pass

SAMPLE_EVERY_S = 5


def due(run: Pass) -> bool:
    last = DeploymentSample.objects.filter(deployment=run.deployment).order_by("-at") \
        .values_list("at", flat=True).first()
    return last is None or (run.now - last).total_seconds() >= SAMPLE_EVERY_S


def record(run: Pass) -> None:
    d = run.deployment
    if not due(run):
        return
    rows = list(Instance.objects.filter(deployment=d))

    def total(field):
        values = [getattr(r, field) for r in rows if getattr(r, field) is not None]
        return sum(values) if values else None
    DeploymentSample.objects.create(
        deployment=d, desired=d.replicas if d.state == DeploymentState.ACTIVE else 0,
        ready=sum(1 for r in rows if r.health == Health.HEALTHY),
        cpu_percent=total("cpu_percent"), memory_bytes=total("memory_bytes"),
        inflight=total("inflight"))
    events.publish(d.agent.team_id, "sample", {}, deployment_id=d.pk)  # charts, CPU, memory

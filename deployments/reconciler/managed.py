"""The path for drivers that manage replicas themselves (Kubernetes): apply
the whole deployment, then mirror what the runtime reports into Instance rows,
judged by the driver."""
from __future__ import annotations

from ..models import DeploymentState, Health, Instance
from ..patterns import Verdict
from ..runtimes import RuntimeFailure
from . import health
from .context import Pass
from .specs import deployment_spec

JUDGED = {"healthy": Health.HEALTHY, "degraded": Health.DEGRADED,
          "progressing": Health.PROGRESSING}


def run_managed(run: Pass) -> str:
    d, driver = run.deployment, run.primary
    try:
        if d.state == DeploymentState.STOPPED:
            driver.delete_deployment(d.pk)
        elif d.state == DeploymentState.ACTIVE:
            driver.apply_deployment(deployment_spec(run))
        units = driver.list_instances(d.pk)
    except RuntimeFailure as exc:
        run.event("Failed" if exc.permanent else "Retrying", str(exc), warning=True)
        return health.write(run, Verdict(Health.DEGRADED if exc.permanent else Health.UNKNOWN,
                                         str(exc), requeue_in=None if exc.permanent else 5))
    versions = {str(v.number): v for v in d.agent.versions.all()}
    revisions = {str(r.number): r for r in d.revisions.select_related("version")}
    rows = {r.name: r for r in Instance.objects.filter(deployment=d)}
    for unit in units:
        row = rows.pop(unit.name, None) or Instance(deployment=d, name=unit.name,
                                                    target=d.target)
        row.runtime_id, row.host, row.address = unit.runtime_id, unit.host, unit.address
        adopted = run.adopted_fields(unit.version, versions)
        row.version = adopted.pop("version") or row.version
        for name, value in adopted.items():  # e.g. the revision
            setattr(row, name, value or getattr(row, name))
        if unit.revision in revisions:  # labelled (two revisions run during a rollout)
            row.revision = revisions[unit.revision]
            row.version = row.revision.version or row.version
        # Pods carry no generation (a scale would roll them): the one they
        # were last seen under.
        row.generation = unit.generation or d.generation
        row.restarts, row.started_at = unit.restarts, unit.started_at
        row.phase = unit.phase
        judgement = driver.judge(unit)
        row.health = JUDGED.get(judgement.health, Health.PROGRESSING)
        row.health_reason = "" if row.health == Health.HEALTHY else judgement.reason
        is_new = row.pk is None
        row.save()
        if is_new:
            run.event("Created", f"pod {unit.name} observed on {unit.host or 'the cluster'}",
                      instance=unit.name)
    for row in rows.values():
        run.event("Removed", f"pod {row.name} is gone", instance=row.name)
        row.delete()
    return health.rollup(run, list(Instance.objects.filter(deployment=d)
                                   .select_related("version")))

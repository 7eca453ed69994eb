"""Clean-up outside the reconcile pass: remove a deleted deployment's runtime
objects, collect orphans (objects labelled for deployments that no longer
exist, on drivers that can list them), and probe targets."""
from __future__ import annotations

from django.utils import timezone

from ..models import Deployment, Target
from ..runtimes import RuntimeFailure, get_driver


def teardown(deployment_id: int, target_ids: list[int]) -> int:
    """Remove every runtime object of a deleted deployment; returns how many."""
    removed = 0
    for target in Target.objects.filter(pk__in=target_ids):
        driver = get_driver(target)
        if driver.features.manages_replicas:
            driver.delete_deployment(deployment_id)
            continue
        for item in driver.list_instances(deployment_id):
            driver.remove_instance(deployment_id, item.name)
            removed += 1
    return removed


def collect_orphans() -> dict[str, int]:
    """Remove runtime objects labelled for deployments that no longer exist."""
    existing = set(Deployment.objects.values_list("pk", flat=True))
    removed: dict[str, int] = {}
    for target in Target.objects.all():
        try:
            driver = get_driver(target)
            if not driver.features.lists_orphans:
                continue
            for deployment_id in driver.managed_deployment_ids() - existing:
                removed[target.name] = removed.get(target.name, 0) + teardown(
                    deployment_id, [target.pk])
        except RuntimeFailure:
            continue
    return removed


def probe_targets() -> None:
    for target in Target.objects.all():
        try:
            get_driver(target).ping()
            status, reason = "ok", ""
        except RuntimeFailure as exc:
            status, reason = "unreachable", str(exc)[:500]
        Target.objects.filter(pk=target.pk).update(status=status, status_reason=reason,
                                                   last_probe_at=timezone.now())

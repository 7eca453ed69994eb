"""Celery tasks: thin, take ids, JSON only, call domain functions."""
from __future__ import annotations

from celery import shared_task
from django.conf import settings
from django.db.models import Q

from . import samples
from .models import Deployment, DeploymentState
from .reconciler import collect_orphans as collect
from .reconciler import probe_targets as probe
from .reconciler import reconcile as reconcile_once
from .reconciler import teardown as remove_everything


@shared_task(acks_late=True, ignore_result=True)
def reconcile(deployment_id: int) -> str:
    """One pass; the pass says when it wants the next one, the task schedules it."""
    outcome = reconcile_once(deployment_id)
    if outcome.requeue_in is not None:
        reconcile.apply_async((deployment_id,), countdown=outcome.requeue_in,
                              expires=outcome.requeue_in + 30)
    return outcome.word


@shared_task(ignore_result=True)
def sweep() -> int:
    """Beat: re-enqueue every deployment that has anything to keep (self-heal)."""
    ids = list(Deployment.objects.filter(
        Q(state__in=[DeploymentState.ACTIVE, DeploymentState.PAUSED])
        | Q(instances__isnull=False)).distinct().values_list("pk", flat=True))
    for deployment_id in ids:
        reconcile.apply_async((deployment_id,), expires=settings.HANGAR_SWEEP_SECONDS * 2)
    return len(ids)


@shared_task(acks_late=True, ignore_result=True)
def teardown(deployment_id: int, target_ids: list[int]) -> int:
    return remove_everything(deployment_id, target_ids)


@shared_task(ignore_result=True)
def probe_targets() -> None:
    probe()


@shared_task(ignore_result=True)
def collect_orphans() -> dict:
    return collect()


@shared_task(ignore_result=True)
def prune_samples() -> int:
    """Beat: delete chart samples past their retention."""
    return samples.prune()

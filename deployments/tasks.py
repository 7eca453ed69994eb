"""Celery tasks: thin, take ids, JSON only, call domain functions."""
from __future__ import annotations

from celery import shared_task
from django.conf import settings
from django.db.models import Q

from . import samples
from .autoscaling.polling import readings_due
from .autoscaling.scaler import autoscale
from .batch import scheduler as batch_scheduler
from .batch import supervisor as batch_supervisor
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


@shared_task(ignore_result=True)
def poll_lag() -> int:
    """Beat (every HANGAR_LAG_TICK_S): each reading of a stream's lag due
    before the next tick, enqueued at its own time (polling_s is honoured
    below the sweep interval)."""
    window = settings.HANGAR_LAG_TICK_S
    due = readings_due(window)
    for deployment_id, countdown in due:
        read_lag.apply_async((deployment_id,), countdown=countdown,
                             expires=countdown + window * 2)
    return len(due)


@shared_task(ignore_result=True)
def read_lag(deployment_id: int) -> None:
    """One reading of the deployment's stream when it is due, and the
    autoscaler's decision on it (nothing when it is not due)."""
    autoscale(deployment_id)


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


@shared_task(ignore_result=True)
def batch_tick() -> dict:
    """Beat (every HANGAR_BATCH_TICK_S) and after batch verbs: fire due
    occurrences, then one supervision pass over pending and running jobs. Any
    number may run at once (claims and runs are row-locked, SKIP LOCKED)."""
    fired = batch_scheduler.tick()
    supervised = batch_supervisor.supervise()
    return {"fired": len(fired.runs), "missed": fired.missed, "started": supervised.started,
            "finished": supervised.finished}

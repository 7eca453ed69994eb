"""Celery tasks: thin, take ids, call domain functions."""
from __future__ import annotations

from celery import shared_task


@shared_task(acks_late=True, ignore_result=True)
def reconcile(deployment_id: int) -> None:
    from .reconciler import reconcile_deployment

    reconcile_deployment(deployment_id)

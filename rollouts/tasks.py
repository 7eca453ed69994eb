"""Celery tasks: thin, take ids, call the engine and the notifier."""
from __future__ import annotations

import random

from celery import shared_task

from telemetry.budgets import WebhookError

from . import engine, notify


@shared_task(acks_late=True, ignore_result=True)
def advance(deployment_id: int) -> str:
    rollout = engine.advance(deployment_id)
    return rollout.phase if rollout is not None else "none"


@shared_task(ignore_result=True)
def tick() -> int:
    """Beat, every HANGAR_ROLLOUT_TICK_S: steps, pauses and analysis come due."""
    return engine.advance_all()


@shared_task(bind=True, acks_late=True, ignore_result=True, max_retries=notify.MAX_ATTEMPTS)
def deliver(self, notification_id: int) -> str | None:
    try:
        return notify.deliver(notification_id)
    except WebhookError as exc:
        backoff = min(300, 2 ** self.request.retries * 2) * (0.5 + random.random())
        raise self.retry(exc=exc, countdown=backoff) from None

"""Celery tasks: thin, take ids, JSON only, call domain functions."""
from __future__ import annotations

from celery import shared_task

from deployments import effects
from deployments.events import publish

from .budgets import WebhookError, deliver_webhook, evaluate, evaluate_all, webhooks_to_resend
from .cost import accrue_compute as accrue
from .models import Budget
from .storage import retention as apply_retention


@shared_task(ignore_result=True)
def accrue_compute() -> int:
    """Beat: add compute cost for running instances; publish a ``cost.tick`` each."""
    accrued = accrue()
    for entry in accrued:
        publish(entry.team_id, "cost.tick",
                {"deployment_id": entry.deployment_id, "compute_usd": str(entry.cost_usd)},
                deployment_id=entry.deployment_id)
    return len(accrued)


@shared_task(ignore_result=True)
def evaluate_budgets() -> int:
    return evaluate_all()


@shared_task(ignore_result=True)
def evaluate_budget(budget_id: int) -> int:
    budget = Budget.objects.select_related("team", "agent").filter(pk=budget_id).first()
    if budget is None:
        return 0
    return len(evaluate(budget))


@shared_task(ignore_result=True, autoretry_for=(WebhookError,), max_retries=4,
             retry_backoff=5, retry_backoff_max=300, retry_jitter=True)
def send_budget_webhook(event_id: int) -> str | None:
    """Post a threshold's notification, once: the attempt is claimed first, so
    a duplicate (a resend, a redelivery) finds it in flight or done. One that
    fails (not one refused) is retried with exponential backoff and jitter."""
    return deliver_webhook(event_id)


@shared_task(ignore_result=True)
def resend_budget_webhooks() -> int:
    """Beat: enqueue again the notifications whose enqueue, retry or worker was lost."""
    ids = webhooks_to_resend()
    for event_id in ids:
        effects.enqueue(send_budget_webhook, event_id)
    return len(ids)


@shared_task(ignore_result=True)
def retention() -> dict:
    """Beat: partitions ahead, old spans, runs and compute rows away."""
    return apply_retention()

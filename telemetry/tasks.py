"""Celery tasks: thin, take ids, JSON only, call domain functions."""
from __future__ import annotations

import random

from celery import shared_task

from .models import Budget, BudgetEvent


@shared_task(ignore_result=True)
def accrue_compute() -> int:
    """Beat: add compute cost for running instances; publish a ``cost.tick`` each."""
    from deployments.events import publish

    from .cost import accrue_compute as accrue

    accrued = accrue()
    for entry in accrued:
        publish(entry.team_id, "cost.tick",
                {"deployment_id": entry.deployment_id, "compute_usd": str(entry.cost_usd)},
                deployment_id=entry.deployment_id)
    return len(accrued)


@shared_task(ignore_result=True)
def evaluate_budgets() -> int:
    from .budgets import evaluate_all

    return evaluate_all()


@shared_task(ignore_result=True)
def evaluate_budget(budget_id: int) -> int:
    from .budgets import evaluate

    budget = Budget.objects.select_related("team", "agent").filter(pk=budget_id).first()
    if budget is None:
        return 0
    return len(evaluate(budget))


@shared_task(bind=True, ignore_result=True, max_retries=4)
def send_budget_webhook(self, event_id: int) -> None:
    from .budgets import WebhookError, WebhookRefused, post_webhook

    event = BudgetEvent.objects.select_related("budget__team", "budget__agent").filter(
        pk=event_id).first()
    if event is None or not event.budget.webhook_url:
        return
    try:
        post_webhook(event)
    except WebhookRefused as exc:
        BudgetEvent.objects.filter(pk=event_id).update(webhook_status=f"refused: {exc}"[:200])
        return
    except WebhookError as exc:
        if self.request.retries >= self.max_retries:
            BudgetEvent.objects.filter(pk=event_id).update(webhook_status=f"failed: {exc}")
            return
        BudgetEvent.objects.filter(pk=event_id).update(webhook_status=f"retrying: {exc}")
        delay = 2 ** self.request.retries * 5 + random.uniform(0, 3)
        raise self.retry(exc=exc, countdown=delay) from None


@shared_task(ignore_result=True)
def retention() -> dict:
    """Beat: partitions ahead, old spans, runs and compute rows away."""
    from .storage import retention as apply_retention

    return apply_retention()

"""Celery tasks: thin, take ids, JSON only, call domain functions."""
from __future__ import annotations

from celery import shared_task

from deployments.events import publish

from .budgets import WebhookError, WebhookRefused, evaluate, evaluate_all, post_webhook
from .cost import accrue_compute as accrue
from .models import Budget, BudgetEvent
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


@shared_task(bind=True, ignore_result=True, autoretry_for=(WebhookError,), max_retries=4,
             retry_backoff=5, retry_backoff_max=300, retry_jitter=True)
def send_budget_webhook(self, event_id: int) -> None:
    """Post a threshold's notification; a webhook that fails (not one refused)
    is retried with exponential backoff and jitter, and its state recorded."""
    event = BudgetEvent.objects.select_related("budget__team", "budget__agent").filter(
        pk=event_id).first()
    if event is None or not event.budget.webhook_url:
        return
    try:
        post_webhook(event)
    except WebhookRefused as exc:
        BudgetEvent.objects.filter(pk=event_id).update(webhook_status=f"refused: {exc}"[:200])
    except WebhookError as exc:
        if self.request.retries >= self.max_retries:
            BudgetEvent.objects.filter(pk=event_id).update(webhook_status=f"failed: {exc}")
            return
        BudgetEvent.objects.filter(pk=event_id).update(webhook_status=f"retrying: {exc}")
        raise


@shared_task(ignore_result=True)
def retention() -> dict:
    """Beat: partitions ahead, old spans, runs and compute rows away."""
    return apply_retention()

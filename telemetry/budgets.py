"""Budgets: verbs that change them, and what happens when spend crosses a threshold.

Every change is audited. A crossed threshold writes one ``BudgetEvent`` (once
per budget, month, percent and amount), publishes a ``cost.tick`` hint, posts
to the budget's webhook, and for ``pause`` / ``scale_to_zero`` changes the
deployments through ``deployments.actions`` with a budget actor, so the audit
log names the budget. ``revert_budget_event`` puts back what it changed.
"""
from __future__ import annotations

import ipaddress
import json
import logging
import socket
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from deployments import actions, audit, effects
from deployments.audit import Actor
from deployments.errors import Conflict, DomainError, Invalid
from deployments.events import publish
from deployments.models import Agent, Deployment, DeploymentState, Team

from .cost import month_start, month_to_date
from .models import Budget, BudgetAction, BudgetEvent, WebhookState

log = logging.getLogger(__name__)

EDITABLE = {"name", "amount_usd", "thresholds", "webhook_url", "enabled"}
# What a budget may change on a deployment, and so what a revert may put back.
ACTION_CHANGES = {
    BudgetAction.PAUSE: {"state": DeploymentState.PAUSED},
    BudgetAction.SCALE_TO_ZERO: {"replicas": 0, "autoscale_signal": ""},
}


@dataclass(frozen=True)
class BudgetActor(Actor):
    """The acting principal when a budget changes a deployment."""

    budget_name: str = ""

    @property
    def label(self) -> str:
        return f"budget {self.budget_name}"[:150]


def budget_actor(budget: Budget) -> BudgetActor:
    return BudgetActor(user=None, source="budget", budget_name=f"{budget.name!r} #{budget.pk}")


DUPLICATE = "The team already has a budget with this name."


def _evaluate_after_commit(budget_id: int) -> None:
    # With the broker down, beat evaluates it on its next round.
    effects.enqueue_on_commit("telemetry.tasks.evaluate_budget", budget_id)


@transaction.atomic
def create_budget(team: Team, *, actor: Actor, agent: Agent | None = None, **fields) -> Budget:
    if agent is not None and agent.team_id != team.pk:
        raise Invalid({"agent_id": ["This agent belongs to another team."]})
    unknown = set(fields) - EDITABLE
    if unknown:
        raise Invalid(f"Unknown fields: {', '.join(sorted(unknown))}.")
    budget = Budget(team=team, agent=agent, **fields)
    actions.validated_save(budget, conflict=DUPLICATE)
    audit.record(actor, "budget.create", budget, after=audit.snapshot(budget))
    _evaluate_after_commit(budget.pk)
    return budget


@transaction.atomic
def update_budget(budget: Budget, *, actor: Actor, **changes) -> Budget:
    budget = Budget.objects.select_for_update(of=("self",)).select_related(
        "team", "agent").get(pk=budget.pk)
    before = audit.snapshot(budget)
    changed = actions.apply_changes(budget, changes, EDITABLE)
    if not changed:
        return budget
    actions.validated_save(budget, update_fields=[*changed, "updated_at"], conflict=DUPLICATE)
    audit.record(actor, "budget.update", budget, before=before, after=audit.snapshot(budget))
    _evaluate_after_commit(budget.pk)
    return budget


@transaction.atomic
def delete_budget(budget: Budget, *, actor: Actor) -> None:
    audit.record(actor, "budget.delete", budget, before=audit.snapshot(budget))
    budget.delete()


# Evaluation ---------------------------------------------------------------------------


def spent_this_month(budget: Budget, at: datetime | None = None) -> Decimal:
    return month_to_date(at=at, team_id=budget.team_id, agent_id=budget.agent_id)


def status(budget: Budget, at: datetime | None = None) -> dict:
    """Spend against the budget this month, for pages and the API."""
    spent = spent_this_month(budget, at)
    percent = float(spent / budget.amount_usd * 100) if budget.amount_usd else 0.0
    return {"spent_usd": spent, "percent": round(percent, 1),
            "month": month_start(at).date()}


def evaluate(budget: Budget, *, now: datetime | None = None) -> list[BudgetEvent]:
    """Fire every threshold this month's spend has crossed and that has not fired."""
    if not budget.enabled:
        return []
    now = now or timezone.now()
    month = month_start(now).date()
    spent = spent_this_month(budget, now)
    fired = []
    for threshold in sorted(budget.thresholds, key=lambda t: t["percent"]):
        percent, action = threshold["percent"], threshold["action"]
        if spent < budget.amount_usd * percent / 100:
            break
        if BudgetEvent.objects.filter(budget=budget, month=month, percent=percent,
                                      amount_usd=budget.amount_usd).exists():
            continue
        event = _fire(budget, percent, action, spent, month, now)
        if event is not None:
            fired.append(event)
    return fired


def evaluate_all(now: datetime | None = None) -> int:
    fired = 0
    for budget in Budget.objects.filter(enabled=True).select_related("team", "agent"):
        fired += len(evaluate(budget, now=now))
    return fired


@transaction.atomic
def _fire(budget: Budget, percent: int, action: str, spent: Decimal, month,
          now: datetime) -> BudgetEvent | None:
    try:
        with transaction.atomic():
            event = BudgetEvent.objects.create(
                budget=budget, team_id=budget.team_id, month=month, percent=percent,
                action=action, amount_usd=budget.amount_usd, spent_usd=spent, at=now,
                **({"webhook_state": WebhookState.PENDING, "webhook_status": "pending"}
                   if budget.webhook_url else {}))
    except IntegrityError:
        return None  # another worker fired this threshold
    actor = budget_actor(budget)
    changes = ACTION_CHANGES.get(action)
    affected: list[dict[str, Any]] = []
    if changes is not None:
        deployments = Deployment.objects.filter(agent__team_id=budget.team_id,
                                                state=DeploymentState.ACTIVE)
        if budget.agent_id:
            deployments = deployments.filter(agent_id=budget.agent_id)
        for deployment in deployments.select_related("agent").order_by("pk"):
            wanted = {k: v for k, v in changes.items() if getattr(deployment, k) != v}
            if not wanted:
                continue
            before = {k: getattr(deployment, k) for k in changes}
            item = {"deployment_id": deployment.pk, "name": str(deployment), "before": before,
                    "after": dict(changes)}
            try:
                actions.update_deployment(deployment, actor=actor, **wanted)
            except DomainError as exc:
                item["error"] = str(exc.detail)
            affected.append(item)
        event.affected = affected
        event.save(update_fields=["affected"])
    audit.record(actor, "budget.trigger", event, team_id=budget.team_id,
                 after={"budget_id": budget.pk, "percent": percent, "action": action,
                        "spent_usd": str(spent), "amount_usd": str(budget.amount_usd),
                        "deployments": [a["deployment_id"] for a in affected]})
    # Pages re-render their cost panels, which carry the budget banner.
    publish(budget.team_id, "budget.triggered",
            {"budget_id": budget.pk, "budget_event_id": event.pk, "percent": percent,
             "action": action})
    if budget.webhook_url:
        effects.enqueue_on_commit("telemetry.tasks.send_budget_webhook", event.pk)
    log.info("budget %s reached %s%% ($%s): %s", budget.pk, percent, spent, action)
    return event


@transaction.atomic
def revert_budget_event(event: BudgetEvent, *, actor: Actor) -> BudgetEvent:
    """Undo what a threshold did: resume or scale back every deployment it changed
    that nobody has changed since; an alert is dismissed. The threshold does not
    fire again this month (raise the amount to arm it again)."""
    event = BudgetEvent.objects.select_for_update(of=("self",)).select_related(
        "budget").get(pk=event.pk)
    if event.reverted_at is not None:
        raise Conflict("This budget event was already reverted.")
    before = audit.snapshot(event)
    restored = []
    for item in event.affected:
        if "error" in item:
            continue
        deployment = Deployment.objects.filter(pk=item["deployment_id"]).first()
        if deployment is None:
            item["revert"] = "deployment deleted"
            continue
        current = {k: getattr(deployment, k) for k in item["after"]}
        if current != item["after"]:
            item["revert"] = "changed since; left as it is"
            continue
        actions.update_deployment(deployment, actor=actor,
                                  **{k: item["before"][k] for k in item["after"]})
        item["revert"] = "restored"
        restored.append(deployment.pk)
    event.reverted_at = timezone.now()
    event.reverted_by = actor.user if actor.user is not None and actor.user.pk else None
    event.save(update_fields=["affected", "reverted_at", "reverted_by"])
    audit.record(actor, "budget.revert", event, before=before, after=audit.snapshot(event))
    publish(event.team_id, "budget.reverted", {"budget_id": event.budget_id,
                                               "budget_event_id": event.pk,
                                               "restored": restored})
    return event


# Webhooks ---------------------------------------------------------------------------------


class WebhookError(Exception):
    """The webhook did not accept the notification (retryable)."""


def webhook_payload(event: BudgetEvent) -> dict:
    budget = event.budget
    return {
        "event": "budget.threshold",
        "budget": {"id": budget.pk, "name": budget.name, "team": budget.team.slug,
                   "agent": budget.agent.slug if budget.agent_id else None,
                   "amount_usd": str(event.amount_usd)},
        "month": event.month.isoformat(), "percent": event.percent, "action": event.action,
        "spent_usd": str(event.spent_usd), "at": event.at.isoformat(),
        "deployments": [{"id": a["deployment_id"], "name": a["name"],
                         "error": a.get("error")} for a in event.affected],
    }


class WebhookRefused(Exception):
    """The webhook points at an address Hangar will not call (not retried)."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # a 3xx is an answer, not somewhere else to post


_opener = urllib.request.build_opener(_NoRedirect)


def check_destination(url: str) -> None:
    """Refuse hosts that resolve to loopback, private, link-local or other
    non-public addresses unless ``HANGAR_WEBHOOK_ALLOW_PRIVATE``."""
    if settings.HANGAR_WEBHOOK_ALLOW_PRIVATE:
        return
    host = urllib.parse.urlsplit(url).hostname or ""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError as exc:
        raise WebhookError(f"cannot resolve {host}: {exc}") from None
    for address in addresses:
        if not ipaddress.ip_address(address.split("%")[0]).is_global:
            raise WebhookRefused(f"{host} resolves to {address}, not a public address "
                                 "(HANGAR_WEBHOOK_ALLOW_PRIVATE allows it)")


def post_webhook(event: BudgetEvent, timeout: float = 5.0) -> int:
    return post_json(event.budget.webhook_url, webhook_payload(event), timeout=timeout)


def post_json(url: str, payload: dict, *, timeout: float = 5.0,
              user_agent: str = "Hangar-Budgets/1") -> int:
    """POST ``payload`` as JSON to ``url``, the SSRF-safe way (public addresses
    only, no redirects followed); the HTTP status, or ``WebhookError``
    (retryable) / ``WebhookRefused`` (not). Other apps' webhooks use it too."""
    check_destination(url)
    body = json.dumps(payload).encode()
    request = urllib.request.Request(
        url, data=body, method="POST",
        headers={"Content-Type": "application/json", "User-Agent": user_agent})
    try:
        with _opener.open(request, timeout=timeout) as response:
            code = response.status
    except urllib.error.HTTPError as exc:
        raise WebhookError(f"HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise WebhookError(str(getattr(exc, "reason", exc))[:150]) from None
    return code


# Delivery: at most one attempt in flight, claimed by compare-and-set. The
# notification is enqueued after the threshold's commit; with the broker down
# that enqueue is lost (deployments.effects), and so is a retry Celery could not
# schedule, or the attempt of a worker that died mid-send. Beat re-enqueues
# every notification left pending, retrying or sending for longer than
# ``HANGAR_WEBHOOK_RESEND_AFTER_S``; a duplicate finds it claimed or done.

WEBHOOK_MAX_ATTEMPTS = 5
OPEN = (WebhookState.PENDING, WebhookState.RETRYING)


def _stale() -> datetime:
    return timezone.now() - timedelta(seconds=settings.HANGAR_WEBHOOK_RESEND_AFTER_S)


def claim_webhook(event_id: int) -> BudgetEvent | None:
    """Claim the next attempt at ``event_id``'s notification, or ``None`` when it
    is done, has no webhook, or another attempt holds it (a claim older than
    the resend delay is taken over: its worker died)."""
    now = timezone.now()
    claimable = Q(webhook_state__in=OPEN) | Q(webhook_state=WebhookState.SENDING,
                                              webhook_attempt_at__lt=_stale())
    claimed = BudgetEvent.objects.filter(claimable, pk=event_id).update(
        webhook_state=WebhookState.SENDING, webhook_attempt_at=now,
        webhook_attempts=F("webhook_attempts") + 1)
    if not claimed:
        return None
    return BudgetEvent.objects.select_related("budget__team", "budget__agent").get(pk=event_id)


def finish_webhook(event: BudgetEvent, state: str, status: str) -> bool:
    """Record the outcome of the attempt ``event`` holds (``claim_webhook``);
    nothing if its claim was taken over meanwhile."""
    return BudgetEvent.objects.filter(
        pk=event.pk, webhook_state=WebhookState.SENDING,
        webhook_attempt_at=event.webhook_attempt_at).update(
        webhook_state=state, webhook_status=status[:200]) == 1


def deliver_webhook(event_id: int) -> str | None:
    """One attempt at ``event_id``'s notification. Raises ``WebhookError`` when
    it failed and may be retried; the state it ended in otherwise (``None``: not
    attempted, done or in flight elsewhere)."""
    event = claim_webhook(event_id)
    if event is None:
        return None
    if not event.budget.webhook_url:
        finish_webhook(event, WebhookState.NONE, "")
        return WebhookState.NONE
    try:
        code = post_webhook(event)
    except WebhookRefused as exc:
        finish_webhook(event, WebhookState.REFUSED, f"refused: {exc}")
        return WebhookState.REFUSED
    except WebhookError as exc:
        if event.webhook_attempts >= WEBHOOK_MAX_ATTEMPTS:
            finish_webhook(event, WebhookState.FAILED, f"failed: {exc}")
            return WebhookState.FAILED
        finish_webhook(event, WebhookState.RETRYING, f"retrying: {exc}")
        raise
    finish_webhook(event, WebhookState.SENT, f"sent (HTTP {code})")
    return WebhookState.SENT


def webhooks_to_resend() -> list[int]:
    """Notifications nobody is working on any more: pending (the enqueue was
    lost) or retrying (the retry was lost) or sending (the worker died) for
    longer than the resend delay."""
    stale = _stale()
    return list(BudgetEvent.objects.filter(
        Q(webhook_state=WebhookState.PENDING, at__lt=stale)
        | Q(webhook_state__in=(WebhookState.RETRYING, WebhookState.SENDING),
            webhook_attempt_at__lt=stale)).order_by("pk").values_list("pk", flat=True))

"""Notifications: rollout events (started, paused, promoted, aborted) and
deployment health changes, sent to the team's hooks.

Each (event, hook) is a ``Notification`` row holding exactly the payload
sent — generic JSON, or Slack-compatible (``text`` plus ``blocks``) — made in
the transaction of the event and sent after commit through telemetry's
SSRF-safe sender (public addresses only unless
``HANGAR_WEBHOOK_ALLOW_PRIVATE``; no redirects), retried with exponential
backoff and jitter up to ``MAX_ATTEMPTS``; an attempt is claimed by
compare-and-set so two workers never send the same one twice at once.
"""
from __future__ import annotations

from django.db.models import F, Q
from django.utils import timezone

from deployments import effects
from deployments.models import Deployment
from telemetry.budgets import WebhookError, WebhookRefused, post_json

from .models import DeliveryState, Hook, HookFormat, Notification

MAX_ATTEMPTS = 5
USER_AGENT = "Hangar-Rollouts/1"


def payload(hook: Hook, deployment: Deployment, rollout, event: str, text: str) -> dict:
    team = deployment.agent.team.slug
    name = f"{team}/{deployment.agent.slug}@{deployment.environment}"
    if hook.format == HookFormat.SLACK:
        return {"text": f"[{name}] {event}: {text}",
                "blocks": [{"type": "section", "text": {
                    "type": "mrkdwn", "text": f"*{name}* — `{event}`\n{text}"}}]}
    body = {"event": event, "text": text, "at": timezone.now().isoformat(),
            "deployment": {"id": deployment.pk, "team": team, "agent": deployment.agent.slug,
                           "environment": deployment.environment,
                           "health": deployment.health}}
    if rollout is not None:
        body["rollout"] = {"number": rollout.number, "strategy": rollout.strategy,
                           "phase": rollout.phase, "weight": rollout.weight,
                           "stable_revision": rollout.stable_revision.number
                           if rollout.stable_revision_id else None,
                           "canary_revision": rollout.canary_revision.number
                           if rollout.canary_revision_id else None,
                           "message": rollout.message}
    return body


def send(deployment: Deployment, rollout, event: str, text: str) -> list[Notification]:
    """Record ``event`` for every hook of the team that wants it; sent after commit."""
    made = []
    for hook in Hook.objects.filter(team_id=deployment.agent.team_id):
        if not hook.wants(event):
            continue
        note = Notification.objects.create(
            hook=hook, deployment=deployment, rollout=rollout if rollout is not None and
            rollout.pk else None, event=event, text=text[:500],
            payload=payload(hook, deployment, rollout, event, text))
        effects.enqueue_on_commit("rollouts.tasks.deliver", note.pk)
        made.append(note)
    return made


def health_changed(deployment: Deployment, before: str, health: str, reason: str) -> None:
    """The reconciler's health listener (``deployments.traffic``)."""
    if not Hook.objects.filter(team_id=deployment.agent.team_id).exists():
        return
    send(deployment, None, "deployment.health", f"{before} → {health}: {reason}")


OPEN = (DeliveryState.PENDING, DeliveryState.RETRYING)


def claim(note_id: int) -> Notification | None:
    now = timezone.now()
    stale = now - timezone.timedelta(seconds=60)
    took = Notification.objects.filter(
        Q(state__in=OPEN) | Q(state=DeliveryState.SENDING, attempt_at__lt=stale),
        pk=note_id).update(state=DeliveryState.SENDING, attempt_at=now,
                           attempts=F("attempts") + 1)
    if not took:
        return None
    return Notification.objects.select_related("hook").get(pk=note_id)


def finish(note: Notification, state: str, status: str) -> None:
    Notification.objects.filter(pk=note.pk, state=DeliveryState.SENDING,
                                attempt_at=note.attempt_at).update(state=state,
                                                                   status=status[:200])


def deliver(note_id: int) -> str | None:
    """One attempt; raises ``WebhookError`` when it may be retried."""
    note = claim(note_id)
    if note is None:
        return None
    try:
        code = post_json(note.hook.url, note.payload, user_agent=USER_AGENT)
    except WebhookRefused as exc:
        finish(note, DeliveryState.REFUSED, f"refused: {exc}")
        return DeliveryState.REFUSED
    except WebhookError as exc:
        if note.attempts >= MAX_ATTEMPTS:
            finish(note, DeliveryState.FAILED, f"failed after {note.attempts} attempts: {exc}")
            return DeliveryState.FAILED
        finish(note, DeliveryState.RETRYING, f"attempt {note.attempts} failed: {exc}")
        raise
    finish(note, DeliveryState.SENT, f"sent (HTTP {code}) on attempt {note.attempts}")
    return DeliveryState.SENT

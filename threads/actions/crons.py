"""Crons: create, update, delete, and which are due."""
from __future__ import annotations

from datetime import datetime

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from deployments import audit, cron
from deployments.audit import Actor
from deployments.errors import Invalid

from ..models import Cron, Strategy, Thread
from .base import STRATEGIES, Assistant, check_size


def _cron_fields(errors: dict, *, schedule, tz, strategy, end_time):
    try:
        cron.zone(tz)
        schedule = cron.validate(schedule, timezone=tz)
    except cron.BadSchedule as exc:
        errors[{"cron": "schedule"}.get(exc.field, exc.field)] = [str(exc)]
    if strategy not in STRATEGIES:
        errors["multitask_strategy"] = [f"Unknown strategy {strategy!r}."]
    if end_time is not None and not isinstance(end_time, datetime):
        errors["end_time"] = ["Give an ISO 8601 date and time."]
    return schedule


@transaction.atomic
def create_cron(assistant: Assistant, *, actor: Actor, schedule: str, tz: str = "UTC",
                thread: Thread | None = None, payload: dict | None = None,
                strategy: str | None = None, metadata=None, enabled: bool = True,
                end_time: datetime | None = None) -> Cron:
    errors: dict[str, list[str]] = {}
    tz = tz or "UTC"
    strategy = strategy or assistant.strategy or Strategy.ENQUEUE
    schedule = _cron_fields(errors, schedule=schedule, tz=tz, strategy=strategy,
                            end_time=end_time)
    if errors:
        raise Invalid(errors)
    check_size(payload or {}, "payload")
    now = timezone.now()
    found = Cron.objects.create(
        team_id=assistant.team_id, agent_id=assistant.agent_id,
        environment=assistant.environment, thread=thread, schedule=schedule, timezone=tz,
        payload=payload or {}, multitask_strategy=strategy, metadata=metadata or {},
        enabled=bool(enabled), end_time=end_time,
        next_due_at=cron.next_after(schedule, now, tz=tz))
    audit.record(actor, "cron.create", found, team_id=assistant.team_id,
                 after=audit.snapshot(found))
    return found


@transaction.atomic
def update_cron(found: Cron, *, actor: Actor, changes: dict) -> Cron:
    found = Cron.objects.select_for_update().get(pk=found.pk)
    before = audit.snapshot(found)
    schedule = changes.get("schedule", found.schedule)
    tz = changes.get("timezone") or found.timezone
    strategy = changes.get("multitask_strategy") or found.multitask_strategy
    end_time = changes.get("end_time", found.end_time)
    errors: dict[str, list[str]] = {}
    schedule = _cron_fields(errors, schedule=schedule, tz=tz, strategy=strategy,
                            end_time=end_time)
    if errors:
        raise Invalid(errors)
    found.schedule, found.timezone, found.multitask_strategy = schedule, tz, strategy
    found.end_time = end_time
    for name in ("payload", "metadata"):
        if changes.get(name) is not None:
            setattr(found, name, {**getattr(found, name), **changes[name]})
    if changes.get("enabled") is not None:
        found.enabled = bool(changes["enabled"])
    found.updated_at = timezone.now()
    found.next_due_at = cron.next_after(schedule, found.updated_at, tz=tz)
    found.save()
    audit.record(actor, "cron.update", found, team_id=found.team_id, before=before,
                 after=audit.snapshot(found))
    return found


@transaction.atomic
def delete_cron(found: Cron, *, actor: Actor) -> None:
    audit.record(actor, "cron.delete", found, team_id=found.team_id,
                 before=audit.snapshot(found))
    found.delete()


def due_crons(now: datetime):
    return Cron.objects.filter(enabled=True, next_due_at__lte=now).filter(
        Q(end_time__isnull=True) | Q(end_time__gt=now))

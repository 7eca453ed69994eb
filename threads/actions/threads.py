"""Threads: create, update, delete, copy, and writing a thread's state."""
from __future__ import annotations

import uuid
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from deployments import audit
from deployments.audit import Actor
from deployments.errors import Conflict, Invalid
from deployments.models import Team

from ..models import ACTIVE, Checkpoint, RunStatus, Thread, ThreadRun
from .base import _checkpoint, _notify_stop, check_size, get_thread


@transaction.atomic
def create_thread(team: Team | int, *, actor: Actor, thread_id=None, metadata=None,
                  if_exists: str = "raise", ttl_minutes: float | None = None) -> Thread:
    team_id = team if isinstance(team, int) else team.pk
    if if_exists not in ("raise", "do_nothing"):
        raise Invalid({"if_exists": ["Use raise or do_nothing."]})
    if metadata is not None and not isinstance(metadata, dict):
        raise Invalid({"metadata": ["Give an object."]})
    check_size(metadata or {}, "metadata")
    expires = None
    if ttl_minutes is not None:
        if not isinstance(ttl_minutes, int | float) or ttl_minutes <= 0:
            raise Invalid({"ttl": ["Give a positive number of minutes."]})
        expires = timezone.now() + timedelta(minutes=ttl_minutes)
    pk = uuid.uuid4()
    if thread_id is not None:
        try:
            pk = uuid.UUID(str(thread_id))
        except ValueError:
            raise Invalid({"thread_id": ["Give a UUID."]}) from None
        existing = Thread.objects.filter(pk=pk).first()
        if existing is not None:
            if existing.team_id != team_id or if_exists == "raise":
                raise Conflict(f"thread {pk} exists")
            return existing
    thread = Thread.objects.create(id=pk, team_id=team_id, metadata=metadata or {},
                                   expires_at=expires)
    audit.record(actor, "thread.create", thread, team_id=team_id, after=audit.snapshot(thread))
    return thread


@transaction.atomic
def update_thread(thread: Thread, *, actor: Actor, metadata=None,
                  ttl_minutes: float | None = None) -> Thread:
    thread = get_thread(thread.team_id, thread.pk, lock=True)
    before = audit.snapshot(thread)
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise Invalid({"metadata": ["Give an object."]})
        merged = {**thread.metadata, **metadata}
        check_size(merged, "metadata")
        thread.metadata = merged
    if ttl_minutes is not None:
        thread.expires_at = timezone.now() + timedelta(minutes=float(ttl_minutes))
    thread.updated_at = timezone.now()
    thread.save(update_fields=["metadata", "expires_at", "updated_at"])
    audit.record(actor, "thread.update", thread, team_id=thread.team_id, before=before,
                 after=audit.snapshot(thread))
    return thread


@transaction.atomic
def delete_thread(thread: Thread, *, actor: Actor) -> list[tuple[str, str]]:
    """Delete it; its active runs are cancelled (returned: the processes to tell)."""
    thread = get_thread(thread.team_id, thread.pk, lock=True)
    # Every run held (events being stored for one wait, or see it gone), then deleted.
    runs = list(ThreadRun.objects.filter(thread=thread).select_for_update()
                .only("pk", "status", "owner"))
    stop = [(str(r.pk), r.owner) for r in runs if r.status == RunStatus.RUNNING]
    _notify_stop(stop)
    before = audit.snapshot(thread)
    audit.record(actor, "thread.delete", thread, team_id=thread.team_id, before=before)
    thread.delete()
    return stop


@transaction.atomic
def copy_thread(thread: Thread, *, actor: Actor) -> Thread:
    source = get_thread(thread.team_id, thread.pk)
    copy = Thread.objects.create(team_id=source.team_id, agent_id=source.agent_id,
                                 environment=source.environment, metadata=source.metadata,
                                 values=source.values)
    for checkpoint in source.checkpoints.order_by("number"):
        copy.checkpoints_made += 1
        Checkpoint.objects.create(thread=copy, number=copy.checkpoints_made,
                                  source=Checkpoint.Source.COPY, values=checkpoint.values)
    copy.save(update_fields=["checkpoints_made"])
    audit.record(actor, "thread.copy", copy, team_id=copy.team_id,
                 after={**audit.snapshot(copy), "copied_from": str(source.pk)})
    return copy


@transaction.atomic
def update_state(thread: Thread, values, *, actor: Actor) -> Checkpoint:
    check_size(values)
    thread = get_thread(thread.team_id, thread.pk, lock=True)
    if ThreadRun.objects.filter(thread=thread, status__in=ACTIVE).exists():
        raise Conflict(f"thread {thread.pk} is busy; update its state when it is idle")
    before = {"values": thread.values}
    if isinstance(thread.values, dict) and isinstance(values, dict):
        values = {**thread.values, **values}
    thread.values = values
    checkpoint = _checkpoint(thread, values, Checkpoint.Source.UPDATE)
    thread.updated_at = timezone.now()
    thread.save(update_fields=["values", "checkpoints_made", "updated_at"])
    audit.record(actor, "thread.update_state", thread, team_id=thread.team_id, before=before,
                 after={"values": values})
    return checkpoint

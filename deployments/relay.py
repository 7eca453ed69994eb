"""Standalone only: relay database changes to the in-memory channel layer.

With Redis, workers publish straight to the web processes. In the standalone
shape (and wherever the channel layer is in memory) the worker is another
process and the channel layer lives in the web process, so a task in the web
process watches what the reconciler writes (deployments, instances, timeline)
and turns it into the same typed events. It is started with the web process
(``controlplane.lifespan``) and stopped with it.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from .events import DeploymentChanged, Instances, LiveEvent, Timeline, message, team_group
from .models import Deployment, DeploymentEvent, Instance

log = logging.getLogger(__name__)
INTERVAL_S = 1.0
_task: asyncio.Task | None = None


def needed() -> bool:
    """Whether this web process must relay (no Redis between it and the workers)."""
    return settings.STANDALONE or not settings.REDIS_URL


def start() -> None:
    """Start the relay on the running loop (once)."""
    global _task
    if _task is None or _task.done():
        _task = asyncio.get_running_loop().create_task(_run(), name="hangar-relay")


async def stop() -> None:
    global _task
    task, _task = _task, None
    if task is not None and not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


Change = tuple[int, int, LiveEvent]  # deployment id, team id, event


def changes_since(since: datetime) -> list[Change]:
    """The events a page would have received for what changed after ``since``."""
    changed: dict[int, dict[str, LiveEvent]] = {}
    touched = Deployment.objects.filter(Q(updated_at__gt=since) | Q(reconciled_at__gt=since))
    for pk, replicas, state in touched.values_list("pk", "replicas", "state"):
        changed.setdefault(pk, {})["deployment.changed"] = DeploymentChanged(
            replicas=replicas, state=state)
    for pk in Instance.objects.filter(updated_at__gt=since).values_list(
            "deployment_id", flat=True).distinct():
        changed.setdefault(pk, {})["instances"] = Instances()
    for pk, reason, text, kind, instance in DeploymentEvent.objects.filter(
            at__gt=since).order_by("at", "pk").values_list(
            "deployment_id", "reason", "message", "type", "instance"):
        changed.setdefault(pk, {})["timeline"] = Timeline(  # the latest of each
            reason=reason, message=text, type=kind, instance=instance)
    teams = dict(Deployment.objects.filter(pk__in=list(changed)).values_list("pk",
                                                                           "agent__team_id"))
    return [(pk, teams[pk], event) for pk, events in changed.items() if pk in teams
            for event in events.values()]


@database_sync_to_async
def _tick(since: datetime | None) -> tuple[datetime, list[Change]]:
    now = timezone.now()
    return now, [] if since is None else changes_since(since)


async def _run() -> None:
    layer = get_channel_layer()
    since = None
    while True:
        try:
            since, changes = await _tick(since)
            for deployment_id, team_id, event in changes:
                await layer.group_send(team_group(team_id),
                                       message(team_id, event, deployment_id=deployment_id))
        except Exception:  # noqa: BLE001 - the relay must outlive a bad tick
            log.exception("live relay tick failed")
        await asyncio.sleep(INTERVAL_S)

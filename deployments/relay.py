"""Standalone only: relay database changes to the in-memory channel layer.

With Redis, workers publish straight to the web processes. In the standalone
shape the worker is another process and the channel layer lives in the web
process, so a small task in the web process watches what the reconciler
writes (deployments, instances, timeline) and turns it into the same events.
"""
from __future__ import annotations

import asyncio
import logging

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer

from .events import deployment_group, team_group

log = logging.getLogger(__name__)
INTERVAL_S = 1.0
_task: asyncio.Task | None = None


def ensure_relay() -> None:
    global _task
    if _task is None or _task.done():
        _task = asyncio.get_running_loop().create_task(_run())


@database_sync_to_async
def _changes(since):
    from django.utils import timezone

    from .models import Deployment, DeploymentEvent, Instance

    now = timezone.now()
    if since is None:
        return now, []
    changed: dict[int, set[str]] = {}
    for pk in Deployment.objects.filter(updated_at__gt=since).values_list("pk", flat=True):
        changed.setdefault(pk, set()).add("deployment.changed")
    for pk in Deployment.objects.filter(reconciled_at__gt=since).values_list("pk", flat=True):
        changed.setdefault(pk, set()).add("deployment.changed")
    for pk in Instance.objects.filter(updated_at__gt=since).values_list(
            "deployment_id", flat=True).distinct():
        changed.setdefault(pk, set()).add("instances")
    for pk in DeploymentEvent.objects.filter(at__gt=since).values_list(
            "deployment_id", flat=True).distinct():
        changed.setdefault(pk, set()).add("timeline")
    teams = dict(Deployment.objects.filter(pk__in=list(changed)).values_list("pk",
                                                                           "agent__team_id"))
    return now, [(pk, teams[pk], kinds) for pk, kinds in changed.items() if pk in teams]


async def _run() -> None:
    layer = get_channel_layer()
    since = None
    while True:
        try:
            since, changes = await _changes(since)
            for deployment_id, team_id, kinds in changes:
                for kind in kinds:
                    message = {"type": "hangar.event", "event": kind, "team_id": team_id,
                               "deployment_id": deployment_id, "payload": {}}
                    await layer.group_send(team_group(team_id), message)
                    await layer.group_send(deployment_group(deployment_id), message)
        except Exception:  # noqa: BLE001 - the relay must outlive a bad tick
            log.exception("live relay tick failed")
        await asyncio.sleep(INTERVAL_S)

"""Typed live events and the one publisher; group names from one helper."""
from __future__ import annotations

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction


def team_group(team_id: int) -> str:
    return f"team.{int(team_id):x}"


def deployment_group(deployment_id: int) -> str:
    return f"deployment.{int(deployment_id):x}"


def publish(team_id: int, event: str, payload: dict, *, deployment_id: int | None = None) -> None:
    """Send ``event`` to the team's group (and the deployment's) after commit."""

    def send() -> None:
        layer = get_channel_layer()
        if layer is None:
            return
        message = {"type": "hangar.event", "event": event, "team_id": team_id,
                   "deployment_id": deployment_id, "payload": payload}
        groups = [team_group(team_id)]
        if deployment_id is not None:
            groups.append(deployment_group(deployment_id))
        for group in groups:
            async_to_sync(layer.group_send)(group, message)

    transaction.on_commit(send)

"""The live event of a rollout: its phase, step or weight changed (the rollout
page re-fetches; the gateway reloads its weights)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from deployments.events import LiveEvent, publish


@dataclass(frozen=True)
class RolloutChanged(LiveEvent):
    name: ClassVar[str] = "rollout.changed"
    number: int
    phase: str
    weight: int


def changed(rollout) -> None:
    publish(rollout.deployment.agent.team_id,
            RolloutChanged(number=rollout.number, phase=rollout.phase, weight=rollout.weight),
            deployment_id=rollout.deployment_id)

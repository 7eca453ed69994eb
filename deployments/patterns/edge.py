"""Edge: devices pull their desired state from the edge app (``edge/``); no
runtime runs replicas for it. Its health is the devices' of the groups that
serve it — "412 of 430 devices on v7; 3 failed; 15 offline" — read from the
``edge_health`` figure the edge app registers (``deployments.figures``), so
this package never imports the app above it."""
from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from .. import figures
from ..models import DeploymentState, Health
from .base import Desired, PatternSettings, Verdict
from .service import ServicePattern


class EdgeSettings(PatternSettings):
    device_selector: dict[str, str] = Field(default_factory=dict,
                                            description="labels a device must carry")


class EdgePattern(ServicePattern):
    name: ClassVar[str] = "edge"
    settings_schema: ClassVar[type[PatternSettings]] = EdgeSettings
    autoscaling_signals: ClassVar[tuple[str, ...]] = ()

    def desired(self, deployment, version, *, features) -> Desired:
        return Desired(replicas=0)  # the devices run it; they pull, nothing is pushed

    def rollup(self, deployment, rows, *, is_current=None, unreachable: dict[str, str]
               ) -> Verdict:
        if deployment.state != DeploymentState.ACTIVE:
            return Verdict(Health.SUSPENDED, deployment.state, converged=True)
        fleet = figures.figure("edge_health", deployment)
        if not fleet:
            return Verdict(Health.PROGRESSING, "waiting for edge devices: no device group "
                                               "serves this deployment", converged=True)
        if not fleet["total"]:
            return Verdict(Health.PROGRESSING, "waiting for edge devices to enrol",
                           converged=True)
        if fleet["failed"]:
            health = Health.DEGRADED
        elif fleet["on_version"] == fleet["total"]:
            health = Health.HEALTHY
        else:
            health = Health.PROGRESSING
        return Verdict(health, fleet["reason"], converged=True)

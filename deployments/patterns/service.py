"""The long-running service: N replicas kept up, probed, healed and rolled up.

Today every pattern runs this way; batch, stream, realtime and edge subclass it
with their own settings schema until their issues give them a lifecycle.
"""
from __future__ import annotations

from typing import Any, ClassVar

from ..models import DeploymentState, Health, worst_health
from .base import Desired, Pattern, PatternSettings, Verdict

BAD = (Health.DEGRADED, Health.MISSING, Health.UNKNOWN)


class ServiceSettings(PatternSettings):
    """A plain long-running service takes no pattern settings."""


class ServicePattern(Pattern):
    name: ClassVar[str] = "service"
    settings_schema: ClassVar[type[PatternSettings]] = ServiceSettings
    autoscaling_signals: ClassVar[tuple[str, ...]] = ("cpu", "inflight")

    def desired(self, deployment, version, *, features) -> Desired:
        replicas = deployment.replicas if deployment.state == DeploymentState.ACTIVE else 0
        return Desired(replicas=replicas, spec_extras=self.spec_extras(version,
                                                                       features=features))

    def spec_extras(self, version, *, features) -> dict[str, Any]:
        """Extra DeploymentSpec fields for drivers that manage replicas."""
        return {}

    # Health rules -------------------------------------------------------------
    def instance_health(self, *, runtime, probe, age_s: float, deadline_s: float) -> Verdict:
        """One instance: the runtime's own judgement first (a failing container,
        a Ready pod), then the HTTP probe within the progress deadline."""
        if runtime.health == "degraded":
            return Verdict(Health.DEGRADED, runtime.reason)
        if runtime.health == "healthy":
            return Verdict(Health.HEALTHY)
        if probe is None:
            return Verdict(Health.PROGRESSING, runtime.reason or "starting")
        if probe.ready:
            return Verdict(Health.HEALTHY)
        if age_s > deadline_s:
            return Verdict(Health.DEGRADED, f"{probe.reason} (not ready after {int(age_s)}s)")
        # Look again soon: launch time is measured to the last replica ready.
        return Verdict(Health.PROGRESSING, f"starting: {probe.reason}", requeue_in=0.5)

    def rollup(self, deployment, rows, *, is_current, unreachable: dict[str, str]) -> Verdict:
        """The deployment is as bad as its worst instance, with a human reason.

        ``unreachable`` maps target names to why they cannot be reached, and is
        only given when every target is unreachable.
        """
        d = deployment
        rows = [r for r in rows if r.pk is not None]
        if d.state == DeploymentState.PAUSED:
            return Verdict(Health.SUSPENDED, f"paused; {len(rows)} instance(s) left as they are")
        if unreachable:
            return Verdict(Health.UNKNOWN, "cannot reach " + "; ".join(
                f"{name}: {why}" for name, why in unreachable.items()))
        if d.state == DeploymentState.STOPPED:
            if rows:
                return Verdict(Health.PROGRESSING, f"stopping: {len(rows)} instance(s) left",
                               requeue_in=2)
            return Verdict(Health.SUSPENDED, "stopped", converged=True)
        total = d.replicas
        healthy = [r for r in rows if r.health == Health.HEALTHY and is_current(r)]
        summary = f"{len(healthy)} of {total} replicas healthy"
        bad = [r for r in rows if r.health in BAD]
        if bad:
            worst = worst_health(r.health for r in bad)
            details = "; ".join(f"{r.name} {r.health_reason or r.health.lower()}"
                                for r in bad[:3])
            return Verdict(Health.DEGRADED if worst == Health.DEGRADED else worst,
                           f"{summary}; {details}")
        if len(healthy) == total == len(rows):
            return Verdict(Health.HEALTHY, summary if total else "scaled to zero",
                           converged=True)
        starting = [r for r in rows if r.health != Health.HEALTHY]
        extra = f"; {len(starting)} starting" if starting else ""
        if len(rows) > total:
            extra += f"; {len(rows) - total} to remove"
        return Verdict(Health.PROGRESSING, summary + extra, requeue_in=1)

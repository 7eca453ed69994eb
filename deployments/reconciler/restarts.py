"""Restarts: a Nomad-like budget — N attempts per interval with exponential
delay, then the instance stays failed with the reason."""
from __future__ import annotations

from datetime import timedelta

from django.conf import settings

from ..models import Health, Instance, InstancePhase
from .context import Pass


def restart_due(run: Pass, row: Instance) -> bool:
    """Whether an exited instance may be started again now; if not yet, the
    pass requeues for when it may, and when the budget is spent, it fails."""
    now = run.now
    policy = {**settings.HANGAR_RESTART_POLICY,
              **(run.version_of(row).health or {}).get("restart", {})}
    if row.next_restart_at is not None:
        if row.next_restart_at <= now:
            return True
        run.requeue((row.next_restart_at - now).total_seconds() + 0.2)
        return False
    if row.interval_started_at is None or \
            now - row.interval_started_at > timedelta(seconds=policy["interval_s"]):
        row.interval_started_at, row.restart_attempts = now, 0
    code = row.exit_code
    why = f"exited with code {code}" + (" (killed)" if code in (137, -9) else "")
    if row.restart_attempts >= policy["attempts"]:
        failed(run, row, f"{why}; restarted {row.restart_attempts} time(s) in "
               f"{policy['interval_s']}s, giving up")
        return False
    delay = min(policy["delay_s"] * (2 ** row.restart_attempts), policy["max_delay_s"])
    row.next_restart_at = now + timedelta(seconds=delay)
    row.health, row.health_reason = Health.DEGRADED, f"{why}; restarting in {delay:g}s"
    row.save(update_fields=["interval_started_at", "restart_attempts", "next_restart_at",
                            "health", "health_reason", "updated_at"])
    run.event("Exited", f"{row.name} {why}; restarting in {delay:g}s",
              instance=row.name, warning=True)
    run.requeue(delay + 0.2)
    return False


def failed(run: Pass, row: Instance, reason: str) -> None:
    """The instance cannot get better on its own (a permanent runtime failure
    or a spent restart budget): failed, Degraded, with the reason."""
    row.phase, row.health, row.health_reason = InstancePhase.FAILED, Health.DEGRADED, reason
    row.next_restart_at = None
    row.save(update_fields=["phase", "health", "health_reason", "next_restart_at",
                            "updated_at"])
    run.event("Failed", f"{row.name}: {reason}", instance=row.name, warning=True)


def count_restart(run: Pass, row: Instance) -> None:
    """Book an instance just started again after exiting."""
    row.restarts += 1
    row.restart_attempts += 1
    row.next_restart_at = None
    run.event("Restarted", f"{row.name} restarted (restart {row.restarts})", instance=row.name)

"""An edge deployment's health, from the devices of the groups serving it:
"412 of 430 devices on v7; 3 failed; 15 offline". Registered as the
``edge_health`` figure that ``deployments.patterns.edge`` reads."""
from __future__ import annotations

from .fleet import online_since
from .models import Device, DeviceGroup, DeviceState, EdgeRollout, RolloutStatus
from .rollouts import FAILED_HEALTH, FAILED_PHASES


def edge_health(deployment) -> dict | None:
    """{total, on_version, version, failed, offline, reason}, or None when no
    group serves the deployment."""
    groups = list(DeviceGroup.objects.filter(deployment_id=deployment.pk)
                  .select_related("bundle"))
    if not groups:
        return None
    devices = list(Device.objects.filter(group__in=groups).exclude(state=DeviceState.REVOKED)
                   .values("group_id", "digest", "health", "phase", "last_seen", "state"))
    since = online_since()
    # The version a group is heading to: its running rollout's, else its own.
    wanted = {g.pk: g.bundle for g in groups}
    for rollout in EdgeRollout.objects.filter(group__in=groups, status=RolloutStatus.RUNNING
                                              ).select_related("bundle"):
        wanted[rollout.group_id] = rollout.bundle
    versions = sorted({b.version for b in wanted.values() if b})
    on = failed = offline = 0
    for d in devices:
        bundle = wanted.get(d["group_id"])
        if d["last_seen"] is None or d["last_seen"] < since:
            offline += 1
        elif d["health"] in FAILED_HEALTH or d["phase"] in FAILED_PHASES:
            failed += 1
        if bundle is not None and d["digest"] == f"sha256:{bundle.digest}" \
                and d["health"] == "Healthy":
            on += 1
    label = "/".join(versions) or "no bundle"
    reason = f"{on} of {len(devices)} devices on {label}; {failed} failed; {offline} offline"
    return {"total": len(devices), "on_version": on, "version": label, "failed": failed,
            "offline": offline, "reason": reason}

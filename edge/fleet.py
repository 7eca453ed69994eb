"""Reading the fleet, for the API and the pages alike: filters and search,
online by last seen, a device and a rollout as shown."""
from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db.models import Q, QuerySet
from django.utils import timezone

from .bundles import max_bytes as max_bundle_bytes
from .bundles import too_large
from .models import Device, EdgeRollout
from .rollouts import counts

__all__ = ["ROLLOUTS", "device_out", "filtered", "max_bundle_bytes", "rollout_out", "too_large"]
ROLLOUTS = EdgeRollout.objects.select_related("bundle", "previous_bundle").prefetch_related(
    "waves")


def online_since():
    return timezone.now() - timedelta(seconds=settings.HANGAR_EDGE_OFFLINE_AFTER_S)


def filtered(queryset: QuerySet, *, group_id=None, state=None, online=None, health=None,
             q=None) -> QuerySet:
    if group_id:
        queryset = queryset.filter(group_id=group_id)
    if state:
        queryset = queryset.filter(state=state)
    if health:
        queryset = queryset.filter(health=health)
    if online is not None:
        recent = Q(last_seen__gte=online_since())
        queryset = queryset.filter(recent if online else ~recent | Q(last_seen__isnull=True))
    if q:
        q = q.strip()
        queryset = queryset.filter(Q(name__icontains=q) | Q(version__icontains=q)
                                   | Q(labels__icontains=q) | Q(last_error__icontains=q))
    return queryset


def device_out(device: Device) -> dict:
    return {
        "id": device.pk, "team_id": device.team_id, "group_id": device.group_id,
        "group": device.group.name, "name": device.name, "labels": device.labels,
        "state": device.state, "online": device.online(), "last_seen": device.last_seen,
        "phase": device.phase, "health": device.health, "version": device.version,
        "digest": device.digest, "last_error": device.last_error,
        "bundle_version": device.bundle.version if device.bundle else None,
        "reported": device.reported, "enrolled_at": device.enrolled_at,
    }


def rollout_out(rollout: EdgeRollout) -> dict:
    waves = []
    for wave in rollout.waves.all():
        waves.append({"index": wave.index, "status": wave.status,
                      "started_at": wave.started_at, "finished_at": wave.finished_at,
                      **counts(rollout, wave)})
    return {
        "id": rollout.pk, "team_id": rollout.team_id, "group_id": rollout.group_id,
        "bundle_version": rollout.bundle.version,
        "previous_version": rollout.previous_bundle.version if rollout.previous_bundle else None,
        "status": rollout.status, "reason": rollout.reason, "current_wave": rollout.current_wave,
        "health_threshold": rollout.health_threshold,
        "failure_threshold": rollout.failure_threshold, "waves": waves,
        "created_at": rollout.created_at, "finished_at": rollout.finished_at,
    }

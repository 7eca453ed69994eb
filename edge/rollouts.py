"""Phased rollouts of a bundle to a device group, in waves.

Waves are sized by count or percentage of the group's devices when the
rollout starts (the last wave takes whatever is left). Starting a wave gives
its devices the new bundle (their previous one is kept as ``previous_bundle``).
Each status report from a device in the current wave re-evaluates it:

* ``failure_threshold`` % of the wave failed on the new bundle (crash-looping,
  degraded, or refused it) → the wave halts, its devices are given the
  previous bundle back, the rollout is ``failed``;
* otherwise ``health_threshold`` % healthy on the new bundle → the next wave
  starts; after the last, the group's bundle is the new one and every device
  of the group (also those enrolled meanwhile) gets it.

Devices that do not answer count as neither; one that was offline finds its
current desired bundle when it polls again. ``promote`` starts the next wave
now; ``abort`` gives every device reached the previous bundle back.
"""
from __future__ import annotations

import math

from django.db import IntegrityError, transaction
from django.utils import timezone

from deployments import audit
from deployments.audit import SYSTEM, Actor
from deployments.errors import Conflict, Invalid

from .models import (
    Bundle,
    Device,
    DeviceEvent,
    DeviceGroup,
    DeviceState,
    EdgeRollout,
    RolloutStatus,
    RolloutWave,
    WaveStatus,
)

FAILED_PHASES = {"crashlooping"}
FAILED_HEALTH = {"Degraded"}


def parse_waves(waves: object) -> list[dict]:
    if not isinstance(waves, list) or not waves or len(waves) > 20:
        raise Invalid({"waves": ["Give 1 to 20 waves, each {\"percent\": p} or {\"count\": n}."]})
    out = []
    for i, wave in enumerate(waves):
        if not isinstance(wave, dict) or len(wave) != 1 or not (
                set(wave) <= {"percent", "count"}):
            raise Invalid({f"waves.{i}": ["Give exactly one of percent or count."]})
        (kind, value), = wave.items()
        if not isinstance(value, int) or isinstance(value, bool) or value < 1 or (
                kind == "percent" and value > 100):
            raise Invalid({f"waves.{i}.{kind}": [
                "Give a whole number from 1 to 100." if kind == "percent"
                else "Give a whole number of devices, 1 or more."]})
        out.append({kind: value})
    return out


def _split(devices: list[int], waves: list[dict]) -> list[list[int]]:
    total, start, slices = len(devices), 0, []
    for i, wave in enumerate(waves):
        if i == len(waves) - 1:
            size = total - start
        elif "count" in wave:
            size = wave["count"]
        else:
            size = math.ceil(total * wave["percent"] / 100)
        slices.append(devices[start:start + size])
        start = min(total, start + size)
    return slices


def _threshold(value: object, field: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 100:
        raise Invalid({field: ["Give a percentage from 1 to 100."]})
    return value


@transaction.atomic
def start_rollout(group: DeviceGroup, bundle: Bundle, *, waves: object,
                  health_threshold: object = 90, failure_threshold: object = 20,
                  actor: Actor) -> EdgeRollout:
    if bundle.team_id != group.team_id:
        raise Invalid({"bundle_id": ["The bundle belongs to another team."]})
    waves = parse_waves(waves)
    health = _threshold(health_threshold, "health_threshold")
    failure = _threshold(failure_threshold, "failure_threshold")
    group = DeviceGroup.objects.select_for_update().get(pk=group.pk)
    if group.bundle_id == bundle.pk:
        raise Conflict(f"The group already runs {bundle.version}.")
    try:
        with transaction.atomic():
            rollout = EdgeRollout.objects.create(
                team_id=group.team_id, group=group, bundle=bundle,
                previous_bundle=group.bundle, health_threshold=health,
                failure_threshold=failure,
                created_by=actor.user if actor.user is not None and actor.user.pk else None)
    except IntegrityError:
        raise Conflict("A rollout is already running for this group: promote or abort it."
                       ) from None
    devices = list(Device.objects.filter(group=group).exclude(state=DeviceState.REVOKED)
                   .order_by("pk").values_list("pk", flat=True))
    for index, ids in enumerate(_split(devices, waves)):
        wave = RolloutWave.objects.create(rollout=rollout, index=index)
        wave.devices.set(ids)
    audit.record(actor, "edge.rollout.start", rollout, after=audit.snapshot(rollout))
    _start_wave(rollout, 0)
    return rollout


def _assign(rollout: EdgeRollout, device_ids, bundle: Bundle | None, why: str) -> None:
    queryset = Device.objects.filter(pk__in=list(device_ids))
    Device.bump(queryset.exclude(bundle=bundle) if bundle else queryset.exclude(bundle=None),
                bundle=bundle, previous_bundle=rollout.previous_bundle
                if bundle == rollout.bundle else rollout.bundle)
    label = bundle.version if bundle else "no bundle"
    DeviceEvent.objects.bulk_create([
        DeviceEvent(device_id=pk, kind="desired", message=f"desired: {label} ({why})")
        for pk in device_ids])


def _start_wave(rollout: EdgeRollout, index: int) -> None:
    wave = rollout.waves.filter(index=index).first()
    if wave is None:
        return _succeed(rollout)
    rollout.current_wave = index
    rollout.save(update_fields=["current_wave"])
    wave.status, wave.started_at = WaveStatus.RUNNING, timezone.now()
    wave.save(update_fields=["status", "started_at"])
    ids = list(wave.devices.values_list("pk", flat=True))
    _assign(rollout, ids, rollout.bundle, f"rollout {rollout.pk}, wave {index + 1}")
    evaluate(rollout)


def _succeed(rollout: EdgeRollout) -> None:
    group = rollout.group
    group.previous_bundle, group.bundle = group.bundle, rollout.bundle
    group.save(update_fields=["bundle", "previous_bundle"])
    rest = list(Device.objects.filter(group=group).exclude(state=DeviceState.REVOKED)
                .exclude(bundle=rollout.bundle).values_list("pk", flat=True))
    _assign(rollout, rest, rollout.bundle, f"rollout {rollout.pk} done")
    _finish(rollout, RolloutStatus.SUCCEEDED, f"{rollout.bundle.version} on every wave")


def _finish(rollout: EdgeRollout, status: str, reason: str) -> None:
    rollout.status, rollout.reason, rollout.finished_at = status, reason, timezone.now()
    rollout.save(update_fields=["status", "reason", "finished_at"])


def counts(rollout: EdgeRollout, wave: RolloutWave) -> dict:
    """How the wave's devices are doing on the rollout's bundle."""
    digest = f"sha256:{rollout.bundle.digest}"
    total = healthy = failed = 0
    for d in wave.devices.exclude(state=DeviceState.REVOKED).only(
            "digest", "health", "phase", "reported"):
        total += 1
        refused = any(r.get("digest") in (digest, rollout.bundle.digest)
                      for r in (d.reported or {}).get("refused", []))
        if refused or (d.digest == digest and (d.health in FAILED_HEALTH
                                               or d.phase in FAILED_PHASES)):
            failed += 1
        elif d.digest == digest and d.health == "Healthy":
            healthy += 1
    return {"total": total, "healthy": healthy, "failed": failed,
            "pending": total - healthy - failed}


def evaluate(rollout: EdgeRollout) -> None:
    """Advance, halt or leave the current wave, by its devices' last reports."""
    if rollout.status != RolloutStatus.RUNNING:
        return
    wave = rollout.waves.get(index=rollout.current_wave)
    c = counts(rollout, wave)
    if c["total"] and c["failed"] and c["failed"] * 100 >= rollout.failure_threshold * c["total"]:
        return _halt(rollout, wave, c)
    if c["healthy"] * 100 >= rollout.health_threshold * c["total"]:
        wave.status, wave.finished_at = WaveStatus.HEALTHY, timezone.now()
        wave.save(update_fields=["status", "finished_at"])
        audit.record(SYSTEM, "edge.rollout.advance", rollout,
                     after={"wave": wave.index + 1, **c})
        _start_wave(rollout, wave.index + 1)


def _halt(rollout: EdgeRollout, wave: RolloutWave, c: dict) -> None:
    wave.status, wave.finished_at = WaveStatus.FAILED, timezone.now()
    wave.save(update_fields=["status", "finished_at"])
    previous = rollout.previous_bundle
    _assign(rollout, wave.devices.values_list("pk", flat=True), previous,
            f"rollout {rollout.pk} halted: rolled back")
    _finish(rollout, RolloutStatus.FAILED,
            f"wave {wave.index + 1}: {c['failed']} of {c['total']} devices failed on "
            f"{rollout.bundle.version}; rolled back to "
            f"{previous.version if previous else 'no bundle'}")
    audit.record(SYSTEM, "edge.rollout.halt", rollout, after={"wave": wave.index + 1, **c})


def on_report(device: Device) -> None:
    """A device reported: re-evaluate the running rollout whose current wave it is in."""
    rollout = (EdgeRollout.objects.select_for_update().select_related("bundle", "group")
               .filter(group_id=device.group_id, status=RolloutStatus.RUNNING,
                       waves__devices=device, waves__status=WaveStatus.RUNNING).first())
    if rollout is not None:
        evaluate(rollout)


def _locked(rollout: EdgeRollout) -> EdgeRollout:
    rollout = EdgeRollout.objects.select_for_update().select_related("bundle", "group").get(
        pk=rollout.pk)
    if rollout.status != RolloutStatus.RUNNING:
        raise Conflict(f"The rollout is {rollout.status}, not running.")
    return rollout


@transaction.atomic
def promote_rollout(rollout: EdgeRollout, *, actor: Actor) -> EdgeRollout:
    rollout = _locked(rollout)
    before = audit.snapshot(rollout)
    wave = rollout.waves.get(index=rollout.current_wave)
    wave.status, wave.finished_at = WaveStatus.HEALTHY, timezone.now()
    wave.save(update_fields=["status", "finished_at"])
    _start_wave(rollout, wave.index + 1)
    rollout.refresh_from_db()
    audit.record(actor, "edge.rollout.promote", rollout, before=before,
                 after=audit.snapshot(rollout))
    return rollout


@transaction.atomic
def abort_rollout(rollout: EdgeRollout, *, actor: Actor) -> EdgeRollout:
    rollout = _locked(rollout)
    before = audit.snapshot(rollout)
    reached = rollout.waves.exclude(status=WaveStatus.PENDING)
    ids = set(Device.objects.filter(waves__in=reached).values_list("pk", flat=True))
    rollout.waves.filter(status=WaveStatus.RUNNING).update(
        status=WaveStatus.ABORTED, finished_at=timezone.now())
    _assign(rollout, ids, rollout.previous_bundle, f"rollout {rollout.pk} aborted")
    _finish(rollout, RolloutStatus.ABORTED, f"aborted by {actor.label}; rolled back")
    audit.record(actor, "edge.rollout.abort", rollout, before=before,
                 after=audit.snapshot(rollout))
    return rollout

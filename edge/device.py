"""What a device does to Hangar's state: enrol, and report its status.

Both are verbs like the operator's (atomic, audited as the device), called
only with a device proven by its enrolment token or its device token.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from deployments import audit
from deployments.audit import Actor
from deployments.errors import Invalid

from . import keys, rollouts
from .auth import DEVICE_TOKEN_PREFIX, DeviceUnauthorized, hash_secret
from .models import Device, DeviceEvent, EnrolmentToken
from .signing import parse_public_key

ENROLMENT_PREFIX = "hge_"
MAX_LABELS = 50


def device_actor(device: Device | None = None, ip: str | None = None) -> Actor:
    return Actor(user=None, source=f"device {device.pk}" if device else "device", ip=ip)


def parse_enrolment_token(raw: object) -> tuple[str, str]:
    if not isinstance(raw, str) or not raw.startswith(ENROLMENT_PREFIX):
        raise DeviceUnauthorized("Unknown enrolment token.")
    prefix, _, secret = raw[len(ENROLMENT_PREFIX):].partition("_")
    if not prefix or not secret:
        raise DeviceUnauthorized("Unknown enrolment token.")
    return prefix, secret


@dataclass
class Enrolled:
    device: Device
    device_token: str


def _labels(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > MAX_LABELS or not all(
            isinstance(k, str) and isinstance(v, str) and len(k) <= 100 and len(v) <= 200
            for k, v in value.items()):
        raise Invalid({"labels": ["Give labels as an object of short strings."]})
    return value


@transaction.atomic
def enrol(*, token: object, public_key: object, name: object, labels: object,
          ip: str | None = None) -> Enrolled:
    """A new device for a valid enrolment token (one use spent), or
    ``DeviceUnauthorized`` (401) saying why the token enrols nothing."""
    prefix, secret = parse_enrolment_token(token)
    row = EnrolmentToken.objects.select_related("group").filter(prefix=prefix).first()
    if row is None or not secrets.compare_digest(row.hashed, hash_secret(secret)):
        raise DeviceUnauthorized("Unknown enrolment token.")
    refusal = row.refusal()
    if refusal:
        raise DeviceUnauthorized(f"Refused: {refusal}.")
    key = parse_public_key(public_key)
    if key is None:
        raise Invalid({"public_key": ["Give the device's Ed25519 public key: base64 of its "
                                      "32 raw bytes."]})
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise Invalid({"name": ["Give the device a name (at most 200 characters)."]})
    labels = _labels(labels)
    # Spend one use by compare-and-set: two devices racing for the last use get one each.
    if EnrolmentToken.objects.filter(pk=row.pk, uses_left__gt=0, revoked_at__isnull=True,
                                     expires_at__gt=timezone.now()).update(
            uses_left=F("uses_left") - 1) != 1:
        raise DeviceUnauthorized("Refused: enrolment token used up.")
    device_token = DEVICE_TOKEN_PREFIX + secrets.token_urlsafe(32)
    group = row.group
    device = Device.objects.create(
        team_id=row.team_id, group=group, name=name.strip(), labels=labels, public_key=key,
        token_hash=hash_secret(device_token), enrolled_with=row, bundle=group.bundle,
        previous_bundle=group.previous_bundle)
    keys.ensure_current(row.team_id)
    DeviceEvent.objects.create(device=device, kind="enrolled",
                               message=f"enrolled in {group.name} with token {row.prefix}")
    audit.record(device_actor(device, ip), "edge.device.enrol", device,
                 after=audit.snapshot(device))
    return Enrolled(device=device, device_token=device_token)


REPORTED = ("phase", "health", "version", "digest")


def clean_report(data: dict) -> dict:
    """The report as stored: known fields, sized; bad types are a 422 naming them."""
    errors: dict[str, list[str]] = {}
    out: dict = {}
    for name in (*REPORTED, "error"):
        value = data.get(name)
        if value is not None and not isinstance(value, str):
            errors[name] = ["Give a string or null."]
        out[name] = (value or "")[:2000 if name == "error" else 100]
    for name in ("buffered", "dropped"):
        value = data.get(name, 0)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            errors[name] = ["Give a count (a whole number, 0 or more)."]
        else:
            out[name] = value
    usage = data.get("usage") or {}
    if not isinstance(usage, dict):
        errors["usage"] = ["Give an object {cpu_percent, memory_bytes}."]
    else:
        out["usage"] = {k: usage[k] for k in ("cpu_percent", "memory_bytes")
                        if isinstance(usage.get(k), int | float)
                        and not isinstance(usage.get(k), bool)}
    refused = data.get("refused") or []
    if not isinstance(refused, list) or not all(
            isinstance(r, dict) and isinstance(r.get("digest"), str) for r in refused):
        errors["refused"] = ["Give a list of {digest, reason}."]
    else:
        out["refused"] = [{"digest": r["digest"][:71], "reason": str(r.get("reason", ""))[:500]}
                          for r in refused[:20]]
    if errors:
        raise Invalid(errors)
    return out


@transaction.atomic
def report_status(device: Device, data: dict) -> Device:
    """Store the device's report; what changed goes on its timeline and may move
    a rollout it is part of."""
    report = clean_report(data)
    before = {name: getattr(device, name) for name in REPORTED}
    before_error, before_refused = device.last_error, set(
        r["digest"] for r in device.reported.get("refused", []))
    now = timezone.now()
    device.reported = report
    device.reported_at = now
    for name in REPORTED:
        setattr(device, name, report[name])
    device.last_error = report["error"]
    device.save(update_fields=["reported", "reported_at", *REPORTED, "last_error"])
    events = []
    if any(before[n] != report[n] for n in REPORTED):
        events.append(DeviceEvent(device=device, at=now, kind="status", message=(
            f"{report['phase'] or '?'} · {report['health'] or '?'} · "
            f"{report['version'] or 'no bundle'}")))
    if report["error"] and report["error"] != before_error:
        events.append(DeviceEvent(device=device, at=now, kind="error", message=report["error"]))
    for refused in report["refused"]:
        if refused["digest"] not in before_refused:
            events.append(DeviceEvent(device=device, at=now, kind="refused", message=(
                f"refused {refused['digest']}: {refused['reason']}")))
    DeviceEvent.objects.bulk_create(events)
    rollouts.on_report(device)
    return device

"""The desired-state document a device pulls, and its ETag.

The ETag is built from the device's ``state_version`` (bumped by every change
to what it should see: its bundle, quarantine, a team key rotated or retired)
and the poll settings, so answering ``304`` needs the one row the token
lookup already read. Long poll (``?wait=s``) re-reads that one integer once
a second until it moves or the wait is over.
"""
from __future__ import annotations

import time

from django.conf import settings
from django.urls import reverse

from .models import Bundle, BundleSignature, Device, DeviceState, KeyStatus, SigningKey


def etag(device: Device) -> str:
    return etag_for(device.pk, device.state_version)


def etag_for(device_id: int, state_version: int) -> str:
    return (f'"d{device_id}.{state_version}.{settings.HANGAR_EDGE_POLL_INTERVAL_S}.'
            f'{settings.HANGAR_EDGE_JITTER_S}"')


def matches(if_none_match: str, tag: str) -> bool:
    candidates = [t.strip().removeprefix("W/") for t in (if_none_match or "").split(",")]
    return tag in candidates or "*" in candidates


def wait_for_change(device: Device, seconds: float) -> Device:
    """Until the device's state version moves (or ``seconds`` pass): the device
    as it is then."""
    deadline = time.monotonic() + min(seconds, settings.HANGAR_EDGE_LONG_POLL_MAX_S)
    version = device.state_version
    while time.monotonic() < deadline:
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        current = Device.objects.filter(pk=device.pk).values_list("state_version", "state")
        row = current.first()
        if row is None or row[0] != version or row[1] == DeviceState.REVOKED:
            break
    device.refresh_from_db()
    return device


def team_keys(team_id: int) -> list[dict]:
    return [{"key_id": k, "public_key": p} for k, p in
            SigningKey.objects.filter(team_id=team_id).exclude(status=KeyStatus.RETIRED)
            .values_list("key_id", "public_key")]


def bundle_document(bundle: Bundle | None) -> dict | None:
    if bundle is None:
        return None
    signature = (BundleSignature.objects.filter(bundle=bundle)
                 .exclude(key__status=KeyStatus.RETIRED).select_related("key")
                 .order_by("key__status", "-key__created_at").first())  # current sorts first
    return {
        "digest": f"sha256:{bundle.digest}",
        "size": bundle.size,
        "url": reverse("api:edge_bundle_download", kwargs={"digest": f"sha256:{bundle.digest}"}),
        "signature": signature.signature if signature else None,
        "key_id": signature.key.key_id if signature else None,
        "version": bundle.version,
        "manifest": bundle.manifest,
    }


def document(device: Device) -> dict:
    run = device.state == DeviceState.ACTIVE
    bundles = {b.pk: b for b in Bundle.objects.filter(
        pk__in=[pk for pk in (device.bundle_id, device.previous_bundle_id) if pk])}
    return {
        "device_id": device.pk,
        "run": run,
        "state": device.state,
        "bundle": bundle_document(bundles.get(device.bundle_id)) if run else None,
        "previous_bundle": bundle_document(bundles.get(device.previous_bundle_id)),
        "poll_interval_s": settings.HANGAR_EDGE_POLL_INTERVAL_S,
        "jitter_s": settings.HANGAR_EDGE_JITTER_S,
        "team_keys": team_keys(device.team_id),
    }

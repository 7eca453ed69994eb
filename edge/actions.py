"""The operator's verbs on the fleet: atomic, validated, audited.

Groups, enrolment tokens (the secret is returned once, only its hash is
kept), devices (revoke, quarantine, release), bundles (upload: stored
content-addressed and signed with the team's current key). Key rotation and
rollouts live in ``keys`` and ``rollouts`` and are re-exported here.
"""
from __future__ import annotations

import secrets
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from deployments import audit
from deployments.actions.base import acting_user, validated_save
from deployments.audit import Actor
from deployments.errors import Conflict, Invalid
from deployments.models import Deployment

from . import bundles as bundle_store
from . import devicecache, keys
from .auth import hash_secret
from .device import ENROLMENT_PREFIX
from .keys import retire_key, rotate_key
from .models import (
    Bundle,
    Device,
    DeviceEvent,
    DeviceGroup,
    DeviceState,
    EnrolmentToken,
)
from .rollouts import abort_rollout, promote_rollout, start_rollout

__all__ = [
    "abort_rollout", "create_enrolment_token", "create_group", "promote_rollout",
    "quarantine_device", "release_device", "retire_key", "revoke_device",
    "revoke_enrolment_token", "rotate_key", "start_rollout", "upload_bundle",
]
MAX_TOKEN_USES = 100_000


@transaction.atomic
def create_group(team, *, name: str, deployment: Deployment | None = None,
                 actor: Actor) -> DeviceGroup:
    if deployment is not None and deployment.agent.team_id != team.pk:
        raise Invalid({"deployment_id": ["The deployment belongs to another team."]})
    group = DeviceGroup(team=team, name=(name or "").strip(), deployment=deployment)
    validated_save(group, conflict=f"A device group named {group.name!r} exists already.")
    audit.record(actor, "edge.group.create", group, after=audit.snapshot(group))
    return group


@transaction.atomic
def create_enrolment_token(group: DeviceGroup, *, name: str = "", max_uses: int = 1,
                           expires_at: datetime, actor: Actor) -> tuple[EnrolmentToken, str]:
    """A token for ``max_uses`` enrolments into ``group`` until ``expires_at``;
    the row and the plaintext (shown once, never stored)."""
    errors = {}
    if not isinstance(max_uses, int) or not 1 <= max_uses <= MAX_TOKEN_USES:
        errors["max_uses"] = [f"Give a number of uses from 1 to {MAX_TOKEN_USES}."]
    if expires_at is None or expires_at <= timezone.now():
        errors["expires_at"] = ["Expiry must be in the future."]
    if errors:
        raise Invalid(errors)
    prefix, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    token = EnrolmentToken(team_id=group.team_id, group=group, name=(name or "").strip(),
                           prefix=prefix, hashed=hash_secret(secret), max_uses=max_uses,
                           uses_left=max_uses, expires_at=expires_at,
                           created_by=acting_user(actor))
    validated_save(token)
    audit.record(actor, "edge.token.create", token, after=audit.snapshot(token))
    return token, f"{ENROLMENT_PREFIX}{prefix}_{secret}"


@transaction.atomic
def revoke_enrolment_token(token: EnrolmentToken, *, actor: Actor) -> EnrolmentToken:
    before = audit.snapshot(token)
    if EnrolmentToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(
            revoked_at=timezone.now()) == 1:
        token.refresh_from_db()
        audit.record(actor, "edge.token.revoke", token, before=before,
                     after=audit.snapshot(token))
    return token


def _set_state(device: Device, state: str, *, allowed_from: set[str], verb: str,
               actor: Actor) -> Device:
    before = audit.snapshot(device)
    if device.state == state:
        return device
    if device.state not in allowed_from:
        raise Conflict(f"The device is {device.state}; it cannot be {verb}d.")
    if Device.bump(Device.objects.filter(pk=device.pk, state=device.state), state=state) != 1:
        raise Conflict("The device changed meanwhile; try again.")
    device.refresh_from_db()
    # This process drops what it knows of the token at commit; the others when
    # PostgreSQL's announcement arrives (edge.devicecache).
    token_hash = device.token_hash
    transaction.on_commit(lambda: devicecache.forget(token_hash))
    DeviceEvent.objects.create(device=device, kind=verb, message=f"{verb}d by {actor.label}")
    audit.record(actor, f"edge.device.{verb}", device, before=before,
                 after=audit.snapshot(device))
    return device


@transaction.atomic
def revoke_device(device: Device, *, actor: Actor) -> Device:
    """401 for every call of the device from now on (for good)."""
    return _set_state(device, DeviceState.REVOKED, verb="revoke", actor=actor,
                      allowed_from={DeviceState.ACTIVE, DeviceState.QUARANTINED})


@transaction.atomic
def quarantine_device(device: Device, *, actor: Actor) -> Device:
    """Still answered, told to run nothing."""
    return _set_state(device, DeviceState.QUARANTINED, verb="quarantine", actor=actor,
                      allowed_from={DeviceState.ACTIVE})


@transaction.atomic
def release_device(device: Device, *, actor: Actor) -> Device:
    return _set_state(device, DeviceState.ACTIVE, verb="release", actor=actor,
                      allowed_from={DeviceState.QUARANTINED})


def upload_bundle(team, *, version: str, chunks, actor: Actor) -> Bundle:
    """Store the tar.gz (413 over the limit, 422 without a valid manifest), then
    record and sign it. The same content under the same team is one bundle."""
    version = (version or "").strip()
    if not version or len(version) > 100:
        raise Invalid({"version": ["Give the bundle's version label (at most 100 characters)."]})
    stored = bundle_store.store(chunks)
    with transaction.atomic():
        existing = Bundle.objects.filter(team=team, digest=stored.digest).first()
        if existing is not None:
            if existing.version != version:
                raise Conflict(f"This content is already bundle {existing.version}.")
            return existing
        bundle = Bundle(team=team, digest=stored.digest, version=version, size=stored.size,
                        manifest=stored.manifest)
        validated_save(bundle, conflict=f"Bundle version {version!r} exists already.")
        keys.sign(bundle, keys.ensure_current(team.pk))
        audit.record(actor, "edge.bundle.upload", bundle, after=audit.snapshot(bundle))
    return bundle

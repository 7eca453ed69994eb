"""Team signing keys as verbs: make the first, rotate, retire; sign bundles.

Rotation: the current key becomes ``valid`` (still sent to devices, its
signatures still accepted), a new ``current`` key signs every bundle of the
team again. Retiring a valid key stops sending it; bundles keep the newer
signatures. Both change what devices see, so they bump the team's devices."""
from __future__ import annotations

from django.db import IntegrityError, transaction
from django.utils import timezone

from deployments import audit
from deployments.audit import Actor
from deployments.errors import Conflict

from . import signing
from .models import Bundle, BundleSignature, Device, KeyStatus, SigningKey


def current(team_id: int) -> SigningKey | None:
    return SigningKey.objects.filter(team_id=team_id, status=KeyStatus.CURRENT).first()


def ensure_current(team_id: int) -> SigningKey:
    """The team's current key, made (once, even when two requests race) if it has none."""
    key = current(team_id)
    if key is not None:
        return key
    key_id, public, private = signing.new_key_material()
    try:
        with transaction.atomic():
            return SigningKey.objects.create(team_id=team_id, key_id=key_id, public_key=public,
                                             private_key=private, status=KeyStatus.CURRENT)
    except IntegrityError:
        return current(team_id)


def sign(bundle: Bundle, key: SigningKey) -> BundleSignature:
    signature, _ = BundleSignature.objects.get_or_create(
        bundle=bundle, key=key,
        defaults={"signature": signing.sign_digest(key.private_key, bundle.digest)})
    return signature


@transaction.atomic
def rotate_key(team, *, actor: Actor) -> SigningKey:
    old = SigningKey.objects.select_for_update().filter(
        team=team, status=KeyStatus.CURRENT).first()
    if old is not None:
        old.status = KeyStatus.VALID
        old.save(update_fields=["status"])
    key_id, public, private = signing.new_key_material()
    key = SigningKey.objects.create(team=team, key_id=key_id, public_key=public,
                                    private_key=private, status=KeyStatus.CURRENT)
    for bundle in Bundle.objects.filter(team=team):
        sign(bundle, key)
    Device.bump(Device.objects.filter(team=team))
    audit.record(actor, "edge.key.rotate", key, after=audit.snapshot(key),
                 before=audit.snapshot(old) if old else None)
    return key


@transaction.atomic
def retire_key(key: SigningKey, *, actor: Actor) -> SigningKey:
    before = audit.snapshot(key)
    if key.status == KeyStatus.CURRENT:
        raise Conflict("The current key signs new bundles: rotate first, then retire it.")
    if SigningKey.objects.filter(pk=key.pk, status=KeyStatus.VALID).update(
            status=KeyStatus.RETIRED, retired_at=timezone.now()) == 1:
        key.refresh_from_db()
        Device.bump(Device.objects.filter(team_id=key.team_id))
        audit.record(actor, "edge.key.retire", key, before=before, after=audit.snapshot(key))
    return key

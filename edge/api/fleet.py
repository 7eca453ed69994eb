"""The operator's fleet API: every fetch through ``deployments.access`` (another
team's object → 404, a viewer writing → 403), every write one verb of
``edge.actions``."""
# No `from __future__ import annotations`: ninja reads the handlers' parameter
# types at import time.

from datetime import timedelta

from django.db.models import Count
from django.utils import timezone
from ninja import File, Form, UploadedFile

from deployments import access
from deployments.api.common import actor_of
from deployments.errors import Invalid, may_raise
from deployments.models import Deployment, Role

from .. import actions, fleet
from ..bundles import TooLarge
from ..models import Bundle, Device, DeviceGroup, EdgeRollout, EnrolmentToken, SigningKey
from ..schemas import (
    BundleOut,
    DeviceEventOut,
    DeviceOut,
    EnrolmentTokenCreated,
    EnrolmentTokenIn,
    EnrolmentTokenOut,
    GroupIn,
    GroupOut,
    KeyOut,
    KeyTeamIn,
    RolloutIn,
    RolloutOut,
)
from .common import router

GROUPS = DeviceGroup.objects.select_related("bundle").annotate(device_count=Count("devices"))
DEVICES = Device.objects.select_related("group", "bundle")
CHUNK = 1024 * 1024


def _group_out(group: DeviceGroup) -> dict:
    return {"id": group.pk, "team_id": group.team_id, "name": group.name,
            "deployment_id": group.deployment_id,
            "bundle_version": group.bundle.version if group.bundle else None,
            "devices": getattr(group, "device_count", 0)}


@router.get("/edge/groups", response=list[GroupOut])
def list_groups(request):
    return [_group_out(g) for g in access.readable(actor_of(request), GROUPS.all())]


@router.post("/edge/groups", response={201: GroupOut})
def create_group(request, payload: GroupIn):
    actor = actor_of(request)
    team = access.get_team_for(actor, payload.team_id, Role.OPERATOR)
    deployment = None
    if payload.deployment_id is not None:
        deployment = access.get_for(actor, Deployment.objects.select_related("agent"),
                                    pk=payload.deployment_id)
    group = actions.create_group(team, name=payload.name, deployment=deployment, actor=actor)
    return 201, _group_out(group)


@router.get("/edge/tokens", response=list[EnrolmentTokenOut])
def list_enrolment_tokens(request):
    return list(access.readable(actor_of(request), EnrolmentToken.objects.all()))


@router.post("/edge/tokens", response={201: EnrolmentTokenCreated})
def create_enrolment_token(request, payload: EnrolmentTokenIn):
    """An enrolment token for a group; its secret is in this answer only."""
    actor = actor_of(request)
    group = access.get_for(actor, DeviceGroup.objects.all(), Role.OPERATOR, pk=payload.group_id)
    expires_at = payload.expires_at or timezone.now() + timedelta(
        seconds=payload.expires_in_s or 86400)
    token, secret = actions.create_enrolment_token(
        group, name=payload.name, max_uses=payload.max_uses, expires_at=expires_at, actor=actor)
    return 201, {**EnrolmentTokenOut.from_orm(token).dict(), "token": secret}


@router.post("/edge/tokens/{token_id}/revoke", response=EnrolmentTokenOut)
def revoke_enrolment_token(request, token_id: int):
    actor = actor_of(request)
    token = access.get_for(actor, EnrolmentToken.objects.all(), Role.OPERATOR, pk=token_id)
    return actions.revoke_enrolment_token(token, actor=actor)


@router.get("/edge/devices", response=list[DeviceOut])
def list_devices(request, group_id: int | None = None, state: str | None = None,
                 online: bool | None = None, health: str | None = None,
                 q: str | None = None, limit: int = 500):
    """Devices, filtered by group, state, online (by last seen), health, and a
    search in name, version and labels."""
    rows = fleet.filtered(access.readable(actor_of(request), DEVICES.all()), group_id=group_id,
                          state=state, online=online, health=health, q=q)
    return [fleet.device_out(d) for d in rows[:max(1, min(limit, 5000))]]


@router.get("/edge/devices/{device_id}", response=DeviceOut)
def get_device(request, device_id: int):
    return fleet.device_out(access.get_for(actor_of(request), DEVICES.all(), pk=device_id))


@router.get("/edge/devices/{device_id}/events", response=list[DeviceEventOut])
def device_events(request, device_id: int):
    device = access.get_for(actor_of(request), DEVICES.all(), pk=device_id)
    return list(device.events.all()[:200])


def _device_verb(verb):
    def view(request, device_id: int):
        actor = actor_of(request)
        device = access.get_for(actor, DEVICES.all(), Role.OPERATOR, pk=device_id)
        return fleet.device_out(verb(device, actor=actor))
    return view


for _name, _verb in (("revoke", actions.revoke_device), ("quarantine", actions.quarantine_device),
                     ("release", actions.release_device)):
    _view = _device_verb(_verb)
    _view.__name__ = f"{_name}_device"
    _view.__doc__ = {"revoke": "Revoke the device: 401 for its every call from now on.",
                     "quarantine": "Keep the device connected but tell it to run nothing.",
                     "release": "Let a quarantined device run its bundle again."}[_name]
    router.post(f"/edge/devices/{{device_id}}/{_name}", response=DeviceOut)(_view)


def _bundle_out(bundle: Bundle) -> dict:
    return {"id": bundle.pk, "team_id": bundle.team_id, "digest": f"sha256:{bundle.digest}",
            "version": bundle.version, "size": bundle.size, "manifest": bundle.manifest,
            "uploaded_at": bundle.uploaded_at,
            "key_ids": [s.key.key_id for s in bundle.signatures.all()]}


@router.get("/edge/bundles", response=list[BundleOut])
def list_bundles(request):
    rows = access.readable(actor_of(request), Bundle.objects.prefetch_related(
        "signatures__key"))
    return [_bundle_out(b) for b in rows]


@router.post("/edge/bundles", response={201: BundleOut})
@may_raise(TooLarge)
def upload_bundle(request, team_id: Form[int], version: Form[str],
                  bundle: File[UploadedFile]):
    """Upload a bundle (multipart: ``team_id``, ``version``, ``bundle`` = the tar.gz
    with ``manifest.json`` at its root). No manifest or a bad one → 422 naming the
    field; larger than HANGAR_EDGE_MAX_BUNDLE_BYTES → 413."""
    actor = actor_of(request)
    team = access.get_team_for(actor, team_id, Role.OPERATOR)
    if bundle.size is not None and bundle.size > fleet.max_bundle_bytes():
        raise fleet.too_large()
    stored = actions.upload_bundle(team, version=version, chunks=bundle.chunks(CHUNK),
                                   actor=actor)
    return 201, _bundle_out(stored)


@router.get("/edge/keys", response=list[KeyOut])
def list_keys(request):
    return list(access.readable(actor_of(request), SigningKey.objects.all()))


@router.post("/edge/keys/rotate", response={201: KeyOut})
def rotate_key(request, payload: KeyTeamIn):
    """A new current signing key; the old one still verifies until retired."""
    actor = actor_of(request)
    team = access.get_team_for(actor, payload.team_id, Role.ADMIN)
    return 201, actions.rotate_key(team, actor=actor)


@router.post("/edge/keys/{signing_key_id}/retire", response=KeyOut)
def retire_key(request, signing_key_id: int):
    """``signing_key_id`` is the key's ``id``; its ``key_id`` is the label devices see."""
    actor = actor_of(request)
    key = access.get_for(actor, SigningKey.objects.all(), Role.ADMIN, pk=signing_key_id)
    return actions.retire_key(key, actor=actor)


@router.get("/edge/rollouts", response=list[RolloutOut])
def list_rollouts(request):
    rows = access.readable(actor_of(request), fleet.ROLLOUTS.all())[:100]
    return [fleet.rollout_out(r) for r in rows]


@router.post("/edge/rollouts", response={201: RolloutOut})
def start_rollout(request, payload: RolloutIn):
    """Roll a bundle out to a group in waves (by count or percent)."""
    actor = actor_of(request)
    group = access.get_for(actor, DeviceGroup.objects.select_related("bundle"), Role.OPERATOR,
                           pk=payload.group_id)
    bundle = Bundle.objects.filter(pk=payload.bundle_id, team_id=group.team_id).first()
    if bundle is None:
        raise Invalid({"bundle_id": ["No such bundle in the group's team."]})
    rollout = actions.start_rollout(group, bundle, waves=payload.waves,
                                    health_threshold=payload.health_threshold,
                                    failure_threshold=payload.failure_threshold, actor=actor)
    return 201, fleet.rollout_out(rollout)


@router.get("/edge/rollouts/{rollout_id}", response=RolloutOut)
def get_rollout(request, rollout_id: int):
    return fleet.rollout_out(access.get_for(actor_of(request), fleet.ROLLOUTS.all(),
                                            pk=rollout_id))


@router.post("/edge/rollouts/{rollout_id}/promote", response=RolloutOut)
def promote_rollout(request, rollout_id: int):
    """Start the next wave now, whatever the current one's health."""
    actor = actor_of(request)
    rollout = access.get_for(actor, EdgeRollout.objects.all(), Role.OPERATOR, pk=rollout_id)
    return fleet.rollout_out(actions.promote_rollout(rollout, actor=actor))


@router.post("/edge/rollouts/{rollout_id}/abort", response=RolloutOut)
def abort_rollout(request, rollout_id: int):
    """Stop the rollout and give every device it reached the previous bundle."""
    actor = actor_of(request)
    rollout = access.get_for(actor, EdgeRollout.objects.all(), Role.OPERATOR, pk=rollout_id)
    return fleet.rollout_out(actions.abort_rollout(rollout, actor=actor))

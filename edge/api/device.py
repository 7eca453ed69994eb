"""The device API. Every route but ``enrol`` authenticates the device by its
token (``Authorization: Device <token>``; unknown or revoked → 401 with the
reason) and answers only about that device."""
# No `from __future__ import annotations`: ninja reads the handlers' parameter
# types at import time.

from django.http import FileResponse, HttpResponse, JsonResponse

from deployments.audit import client_ip
from deployments.errors import NotFound, may_raise

from .. import bundles as bundle_store
from .. import device as device_verbs
from .. import state as desired
from ..auth import DeviceAuth, DeviceUnauthorized
from ..models import Bundle
from ..schemas import DeviceStatusIn, EnrolIn, EnrolOut, StateOut
from .common import router

DEVICE_AUTH = DeviceAuth()


@router.post("/edge/enrol", auth=None, response={201: EnrolOut})
@may_raise(DeviceUnauthorized)
def enrol(request, payload: EnrolIn):
    """Enrol a device with an enrolment token and its Ed25519 public key. An
    expired, used-up, revoked or unknown token is a 401 saying which."""
    done = device_verbs.enrol(token=payload.token, public_key=payload.public_key,
                              name=payload.name, labels=payload.labels, ip=client_ip(request))
    document = desired.document(done.device)
    return 201, {"device_id": done.device.pk, "device_token": done.device_token,
                 "team_keys": document["team_keys"],
                 "poll_interval_s": document["poll_interval_s"],
                 "jitter_s": document["jitter_s"]}


@router.get("/edge/state", auth=DEVICE_AUTH, response={200: StateOut, 304: None})
@may_raise(DeviceUnauthorized)
def device_state(request, wait: int = 0):
    """The device's desired state. With ``If-None-Match`` set to the last
    ETag: ``304`` when nothing changed; ``?wait=s`` holds the request up to
    ``s`` seconds (at most HANGAR_EDGE_LONG_POLL_MAX_S) until it does."""
    device = request.auth
    tag = desired.etag(device)
    if desired.matches(request.headers.get("If-None-Match", ""), tag) and wait > 0:
        device = desired.wait_for_change(device, wait)
        if device.state == "revoked":
            raise DeviceUnauthorized("This device is revoked.")
        tag = desired.etag(device)
    if desired.matches(request.headers.get("If-None-Match", ""), tag):
        response = HttpResponse(status=304)
    else:
        response = JsonResponse(desired.document(device))
    response["ETag"] = tag
    response["Cache-Control"] = "no-cache"
    return response


@router.get("/edge/bundles/{digest}", auth=DEVICE_AUTH, url_name="edge_bundle_download",
            response={200: None})
@may_raise(DeviceUnauthorized)
def download_bundle(request, digest: str):
    """The bundle's tar.gz — only a bundle this device is given (its desired or
    previous one); any other digest is a 404."""
    device = request.auth
    hex_digest = digest.removeprefix("sha256:").lower()
    allowed = {pk for pk in (device.bundle_id, device.previous_bundle_id) if pk}
    bundle = Bundle.objects.filter(pk__in=allowed, digest=hex_digest).first()
    if bundle is None:
        raise NotFound("No such bundle for this device.")
    path = bundle_store.path_for(bundle.digest)
    if not path.exists():
        raise NotFound("The bundle's file is missing on the server.")
    response = FileResponse(path.open("rb"), content_type="application/gzip")
    response["Content-Length"] = str(bundle.size)
    response["ETag"] = f'"{bundle.digest}"'
    return response


@router.post("/edge/status", auth=DEVICE_AUTH, response={204: None})
@may_raise(DeviceUnauthorized)
def device_status(request, payload: DeviceStatusIn):
    """The device reports what it runs: phase, health, version, digest, resource
    use, refused bundles, its last error, and its buffer (spans kept, dropped)."""
    device_verbs.report_status(request.auth, payload.model_dump())
    return 204, None

"""The edge fleet API's authorization matrix (every operator route as admin,
operator, viewer, outsider and anonymous; the shared matrix in
test_api_authz counts these routes as covered), and the device routes
refusing anything but a device token."""
from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.utils import timezone

from deployments.audit import Actor
from deployments.models import AuditEvent
from edge import actions, bundles, keys

from .edge_server_support import bundle_bytes, device_public_key, enrol

RANK = {"viewer": 1, "operator": 2, "admin": 3}

# (id, method, path, body, role needed, status on success)
EDGE_ROUTES = [
    ("list-groups", "GET", "/edge/groups", None, "viewer", 200),
    ("create-group", "POST", "/edge/groups", {"team_id": "{team}", "name": "lab"},
     "operator", 201),
    ("list-tokens", "GET", "/edge/tokens", None, "viewer", 200),
    ("create-token", "POST", "/edge/tokens", {"group_id": "{group}", "max_uses": 3},
     "operator", 201),
    ("revoke-token", "POST", "/edge/tokens/{token}/revoke", None, "operator", 200),
    ("list-devices", "GET", "/edge/devices", None, "viewer", 200),
    ("get-device", "GET", "/edge/devices/{device}", None, "viewer", 200),
    ("device-events", "GET", "/edge/devices/{device}/events", None, "viewer", 200),
    ("revoke-device", "POST", "/edge/devices/{device}/revoke", None, "operator", 200),
    ("quarantine-device", "POST", "/edge/devices/{device}/quarantine", None, "operator", 200),
    ("release-device", "POST", "/edge/devices/{quarantined}/release", None, "operator", 200),
    ("list-bundles", "GET", "/edge/bundles", None, "viewer", 200),
    ("upload-bundle", "POST", "/edge/bundles", "upload", "operator", 201),
    ("list-keys", "GET", "/edge/keys", None, "viewer", 200),
    ("rotate-key", "POST", "/edge/keys/rotate", {"team_id": "{team}"}, "admin", 201),
    ("retire-key", "POST", "/edge/keys/{valid_key}/retire", None, "admin", 200),
    ("list-rollouts", "GET", "/edge/rollouts", None, "viewer", 200),
    ("start-rollout", "POST", "/edge/rollouts",
     {"group_id": "{lab}", "bundle_id": "{v2}", "waves": [{"percent": 100}]},
     "operator", 201),
    ("get-rollout", "GET", "/edge/rollouts/{rollout}", None, "viewer", 200),
    ("promote-rollout", "POST", "/edge/rollouts/{running}/promote", None, "operator", 200),
    ("abort-rollout", "POST", "/edge/rollouts/{running}/abort", None, "operator", 200),
]
# The device's own routes authenticate the device, not a member (below).
DEVICE_ROUTES = [("POST", "/edge/enrol"), ("GET", "/edge/state"),
                 ("GET", "/edge/bundles/{}"), ("POST", "/edge/status")]


@pytest.fixture
def fleet(world, tmp_path, settings):
    settings.HANGAR_EDGE_BUNDLE_DIR = tmp_path / "bundles"
    actor = Actor(user=world.users["admin"])
    group = actions.create_group(world.team, name="floor", actor=actor)
    lab = actions.create_group(world.team, name="bench", actor=actor)
    token, secret = actions.create_enrolment_token(
        group, max_uses=5, expires_at=timezone.now() + timedelta(hours=1), actor=actor)
    device = enrol(secret, "a")
    quarantined = enrol(secret, "b")
    from edge.models import Device

    actions.quarantine_device(Device.objects.get(pk=quarantined["device_id"]), actor=actor)
    v1 = actions.upload_bundle(world.team, version="v1",
                               chunks=[bundle_bytes("v1")], actor=actor)
    v2 = actions.upload_bundle(world.team, version="v2",
                               chunks=[bundle_bytes("v2")], actor=actor)
    done = actions.start_rollout(lab, v1, waves=[{"percent": 100}], actor=actor)
    running = actions.start_rollout(group, v1, waves=[{"count": 1}, {"percent": 100}],
                                    actor=actor)
    old = keys.current(world.team.pk)
    keys.rotate_key(world.team, actor=actor)
    return {"team": world.team.pk, "group": group.pk, "lab": lab.pk, "token": token.pk,
            "device": device["device_id"], "quarantined": quarantined["device_id"],
            "v2": v2.pk, "valid_key": old.pk, "rollout": done.pk, "running": running.pk}


def fill(template, ids):
    if isinstance(template, str):
        if template.startswith("{") and template.endswith("}") and template[1:-1] in ids:
            return ids[template[1:-1]]
        return template.format(**ids)
    if isinstance(template, dict):
        return {k: fill(v, ids) for k, v in template.items()}
    if isinstance(template, list):
        return [fill(v, ids) for v in template]
    return template


@pytest.mark.parametrize("who", ["admin", "operator", "viewer", "outsider", None])
@pytest.mark.parametrize("route", EDGE_ROUTES, ids=[r[0] for r in EDGE_ROUTES])
def test_edge_route_authorization(world, fleet, route, who):
    _, method, path, body, needed, ok_status = route
    client = world.client(who)
    before = AuditEvent.objects.count()
    url = f"/api/v1{fill(path, fleet)}"
    if body == "upload":
        response = client.post(url, data={
            "team_id": world.team.pk, "version": "v9",
            "bundle": SimpleUploadedFile("b.tar.gz", bundle_bytes("v9"))})
    elif body is not None:
        response = getattr(client, method.lower())(
            url, data=json.dumps(fill(body, fleet)), content_type="application/json")
    else:
        response = getattr(client, method.lower())(url)
    if who is None:
        expected = 401
    elif who == "outsider":
        expected = 404 if "{" in path or method == "POST" else 200
    elif RANK[who] >= RANK[needed]:
        expected = ok_status
    else:
        expected = 403
    assert response.status_code == expected, response.content
    if who == "outsider" and method == "GET" and response.status_code == 200:
        assert response.json() == []  # lists show nothing of another team
    writes = method != "GET" and response.status_code < 300
    assert (AuditEvent.objects.count() > before) == writes


def test_device_routes_refuse_member_tokens(world, fleet):
    admin = world.client("admin")
    assert admin.get("/api/v1/edge/state").status_code == 401
    assert admin.post("/api/v1/edge/status", data="{}",
                      content_type="application/json").status_code == 401
    assert admin.get("/api/v1/edge/bundles/sha256:" + "0" * 64).status_code == 401
    assert Client().post("/api/v1/edge/enrol", data=json.dumps(
        {"token": "hgr_nope", "public_key": device_public_key()}),
        content_type="application/json").status_code == 401
    assert bundles.max_bytes() > 0

"""The device API through Django's test client on PostgreSQL: enrolment and
its refusals, the pulled state with its ETag, bundle upload, signing and
download, status reports, revoke and quarantine, and one device never
reading another's state or bundle."""
from __future__ import annotations

import hashlib
import json
from datetime import timedelta

import pytest
from django.test import Client, override_settings
from django.utils import timezone

from deployments.audit import Actor
from deployments.models import AuditEvent
from edge import actions
from edge.auth import flush_last_seen, forget_last_seen
from edge.models import Device, DeviceState, EnrolmentToken, SigningKey

from .edge_server_support import (
    bundle_bytes,
    device_client,
    device_public_key,
    enrol,
    enrolment_token,
    tarball,
    verify_signature,
)


@pytest.fixture
def group(world, tmp_path, settings):
    settings.HANGAR_EDGE_BUNDLE_DIR = tmp_path / "bundles"
    return actions.create_group(world.team, name="shop-floor",
                                actor=Actor(user=world.users["operator"]))


def upload(client, team, data: bytes, version: str):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return client.post("/api/v1/edge/bundles", data={
        "team_id": team.pk, "version": version,
        "bundle": SimpleUploadedFile("b.tar.gz", data, content_type="application/gzip")})


def test_enrol_then_pull_state_with_etag(world, group):
    token = enrolment_token(group, world.users["operator"])
    answer = enrol(token, "sensor-1", labels={"site": "lyon"})
    device = Device.objects.get(pk=answer["device_id"])
    assert device.labels == {"site": "lyon"} and device.group == group
    assert answer["device_token"].startswith("hgd_")
    assert answer["device_token"] not in device.token_hash  # only its hash is kept
    assert [k["key_id"] for k in answer["team_keys"]] == [
        SigningKey.objects.get(team=world.team).key_id]
    assert answer["poll_interval_s"] >= 1 and "jitter_s" in answer

    client = device_client(answer["device_token"])
    first = client.get("/api/v1/edge/state")
    assert first.status_code == 200
    assert first.json()["run"] is True and first.json()["bundle"] is None
    again = client.get("/api/v1/edge/state", headers={"If-None-Match": first["ETag"]})
    assert again.status_code == 304 and again["ETag"] == first["ETag"]
    assert EnrolmentToken.objects.get(group=group).uses_left == 4


def test_a_poll_writes_nothing_but_last_seen_is_flushed(world, group,
                                                        django_assert_num_queries):
    answer = enrol(enrolment_token(group, world.users["operator"]))
    client = device_client(answer["device_token"])
    tag = client.get("/api/v1/edge/state")["ETag"]
    forget_last_seen()
    with django_assert_num_queries(1):  # the token lookup; no write
        assert client.get("/api/v1/edge/state",
                          headers={"If-None-Match": tag}).status_code == 304
    assert Device.objects.get(pk=answer["device_id"]).last_seen is None
    assert flush_last_seen() == 1
    assert Device.objects.get(pk=answer["device_id"]).last_seen is not None


@pytest.mark.parametrize("case, reason", [
    ("expired", "expired"), ("used_up", "used up"), ("revoked", "revoked"),
    ("unknown", "Unknown enrolment token")])
def test_refused_enrolment_tokens_are_401_with_the_reason(world, group, case, reason):
    operator = Actor(user=world.users["operator"])
    row, secret = actions.create_enrolment_token(
        group, max_uses=1, expires_at=timezone.now() + timedelta(hours=1), actor=operator)
    if case == "expired":
        EnrolmentToken.objects.filter(pk=row.pk).update(
            expires_at=timezone.now() - timedelta(seconds=1))
    elif case == "used_up":
        enrol(secret, "first")
    elif case == "revoked":
        actions.revoke_enrolment_token(row, actor=operator)
    elif case == "unknown":
        secret = secret[:-4] + "xxxx"
    devices = Device.objects.count()
    response = Client().post("/api/v1/edge/enrol", data=json.dumps(
        {"token": secret, "public_key": device_public_key(), "name": "late"}),
        content_type="application/json")
    assert response.status_code == 401
    assert reason in response.json()["detail"]
    assert Device.objects.count() == devices


def test_enrol_with_a_bad_public_key_is_422_naming_it(world, group):
    token = enrolment_token(group, world.users["operator"])
    response = Client().post("/api/v1/edge/enrol", data=json.dumps(
        {"token": token, "public_key": "bm90LWEta2V5", "name": "x"}),
        content_type="application/json")
    assert response.status_code == 422 and "public_key" in response.json()["detail"]
    assert EnrolmentToken.objects.get(group=group).uses_left == 5  # nothing spent


def test_bundle_upload_sign_pull_and_download(world, group):
    operator = world.client("operator")
    data = bundle_bytes("v1")
    response = upload(operator, world.team, data, "v1")
    assert response.status_code == 201, response.content
    bundle = response.json()
    assert bundle["digest"] == "sha256:" + hashlib.sha256(data).hexdigest()
    assert bundle["manifest"]["entry"] == ["python3", "main.py"]

    a = enrol(enrolment_token(group, world.users["operator"]), "a")
    rollout = operator.post("/api/v1/edge/rollouts", data=json.dumps(
        {"group_id": group.pk, "bundle_id": bundle["id"], "waves": [{"percent": 100}]}),
        content_type="application/json")
    assert rollout.status_code == 201, rollout.content
    state = device_client(a["device_token"]).get("/api/v1/edge/state").json()
    assert state["bundle"]["digest"] == bundle["digest"] and state["bundle"]["version"] == "v1"
    verify_signature(state["team_keys"], state["bundle"]["key_id"],
                     state["bundle"]["signature"], state["bundle"]["digest"])
    download = device_client(a["device_token"]).get(state["bundle"]["url"])
    assert download.status_code == 200
    assert b"".join(download.streaming_content) == data


def test_one_device_cannot_read_another_s_bundle(world, group):
    operator = world.client("operator")
    v1 = upload(operator, world.team, bundle_bytes("v1"), "v1").json()
    other_group = actions.create_group(world.team, name="lab",
                                       actor=Actor(user=world.users["operator"]))
    a = enrol(enrolment_token(group, world.users["operator"]), "a")
    b = enrol(enrolment_token(other_group, world.users["operator"]), "b")
    operator.post("/api/v1/edge/rollouts", data=json.dumps(
        {"group_id": group.pk, "bundle_id": v1["id"], "waves": [{"count": 1}]}),
        content_type="application/json")
    url = f"/api/v1/edge/bundles/{v1['digest']}"
    assert device_client(a["device_token"]).get(url).status_code == 200
    refused = device_client(b["device_token"]).get(url)
    assert refused.status_code == 404
    state_b = device_client(b["device_token"]).get("/api/v1/edge/state").json()
    assert state_b["device_id"] == b["device_id"] and state_b["bundle"] is None


def test_bundle_without_manifest_is_422(world, group):
    response = upload(world.client("operator"), world.team,
                      tarball({"main.py": b"print(1)\n"}), "v1")
    assert response.status_code == 422
    assert "manifest" in response.json()["detail"]
    bad_entry = upload(world.client("operator"), world.team,
                       bundle_bytes("v1", manifest={"env": {}}), "v1")
    assert bad_entry.status_code == 422 and "manifest.entry" in bad_entry.json()["detail"]
    not_tar = upload(world.client("operator"), world.team, b"hello", "v1")
    assert not_tar.status_code == 422 and "bundle" in not_tar.json()["detail"]


def test_oversized_bundle_is_413(world, group):
    with override_settings(HANGAR_EDGE_MAX_BUNDLE_BYTES=2048):
        response = upload(world.client("operator"), world.team,
                          bundle_bytes("v1") + b"\0" * 4096, "big")
    assert response.status_code == 413 and "bundle" in response.json()["detail"]


def test_viewer_cannot_upload_and_outsider_sees_nothing(world, group):
    assert upload(world.client("viewer"), world.team, bundle_bytes(), "v1").status_code == 403
    assert upload(world.client("outsider"), world.team, bundle_bytes(), "v1").status_code == 404


def test_revoked_device_gets_401_for_every_call(world, group):
    a = enrol(enrolment_token(group, world.users["operator"]), "a")
    client = device_client(a["device_token"])
    assert client.get("/api/v1/edge/state").status_code == 200
    response = world.client("operator").post(f"/api/v1/edge/devices/{a['device_id']}/revoke")
    assert response.status_code == 200 and response.json()["state"] == "revoked"
    assert AuditEvent.objects.filter(action="edge.device.revoke").exists()
    for call in (lambda: client.get("/api/v1/edge/state"),
                 lambda: client.get("/api/v1/edge/bundles/sha256:" + "0" * 64),
                 lambda: client.post("/api/v1/edge/status", data="{}",
                                     content_type="application/json")):
        answer = call()
        assert answer.status_code == 401 and "revoked" in answer.json()["detail"]


def test_quarantined_device_is_told_to_run_nothing_then_released(world, group):
    operator = world.client("operator")
    v1 = upload(operator, world.team, bundle_bytes("v1"), "v1").json()
    a = enrol(enrolment_token(group, world.users["operator"]), "a")
    operator.post("/api/v1/edge/rollouts", data=json.dumps(
        {"group_id": group.pk, "bundle_id": v1["id"], "waves": [{"percent": 100}]}),
        content_type="application/json")
    client = device_client(a["device_token"])
    tag = client.get("/api/v1/edge/state")["ETag"]
    operator.post(f"/api/v1/edge/devices/{a['device_id']}/quarantine")
    told = client.get("/api/v1/edge/state", headers={"If-None-Match": tag})
    assert told.status_code == 200 and told.json()["run"] is False
    assert told.json()["bundle"] is None
    operator.post(f"/api/v1/edge/devices/{a['device_id']}/release")
    back = client.get("/api/v1/edge/state", headers={"If-None-Match": told["ETag"]})
    assert back.json()["run"] is True and back.json()["bundle"]["version"] == "v1"


def test_status_report_is_stored_and_bad_fields_are_422(world, group):
    a = enrol(enrolment_token(group, world.users["operator"]), "a")
    client = device_client(a["device_token"])
    report = {"phase": "running", "health": "Healthy", "version": "v1",
              "digest": "sha256:" + "a" * 64, "usage": {"cpu_percent": 1.5,
                                                        "memory_bytes": 1000},
              "refused": [{"digest": "sha256:" + "b" * 64, "reason": "tampered: size"}],
              "error": None, "buffered": 3, "dropped": 0}
    assert client.post("/api/v1/edge/status", data=json.dumps(report),
                       content_type="application/json").status_code == 204
    device = Device.objects.get(pk=a["device_id"])
    assert (device.phase, device.health, device.version) == ("running", "Healthy", "v1")
    assert device.reported["buffered"] == 3
    assert device.events.filter(kind="refused", message__contains="tampered").exists()
    bad = client.post("/api/v1/edge/status", data=json.dumps({"buffered": -1}),
                      content_type="application/json")
    assert bad.status_code == 422 and "buffered" in json.dumps(bad.json()["detail"])
    assert Device.objects.get(pk=a["device_id"]).reported["buffered"] == 3


def test_key_rotation_keeps_the_old_key_until_retired(world, group):
    operator = world.client("operator")
    v1 = upload(operator, world.team, bundle_bytes("v1"), "v1").json()
    a = enrol(enrolment_token(group, world.users["operator"]), "a")
    operator.post("/api/v1/edge/rollouts", data=json.dumps(
        {"group_id": group.pk, "bundle_id": v1["id"], "waves": [{"percent": 100}]}),
        content_type="application/json")
    client = device_client(a["device_token"])
    old = client.get("/api/v1/edge/state").json()
    assert operator.post("/api/v1/edge/keys/rotate", data=json.dumps(
        {"team_id": world.team.pk}), content_type="application/json").status_code == 403
    admin = world.client("admin")
    new_key = admin.post("/api/v1/edge/keys/rotate", data=json.dumps(
        {"team_id": world.team.pk}), content_type="application/json").json()
    rotated = client.get("/api/v1/edge/state").json()
    assert {k["key_id"] for k in rotated["team_keys"]} == {
        new_key["key_id"], old["bundle"]["key_id"]}
    assert rotated["bundle"]["key_id"] == new_key["key_id"]
    verify_signature(rotated["team_keys"], new_key["key_id"], rotated["bundle"]["signature"],
                     v1["digest"])
    old_key = SigningKey.objects.get(key_id=old["bundle"]["key_id"])
    assert admin.post(f"/api/v1/edge/keys/{old_key.pk}/retire").status_code == 200
    retired = client.get("/api/v1/edge/state").json()
    assert [k["key_id"] for k in retired["team_keys"]] == [new_key["key_id"]]
    assert "PRIVATE" not in json.dumps(new_key) and "private_key" not in new_key
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT private_key FROM edge_signingkey")
        stored = [row[0] for row in cursor.fetchall()]
    assert stored and all(value.startswith("fernet:") for value in stored)
    assert old_key.private_key not in stored


def test_device_state_requires_a_device_token(world, group):
    assert Client().get("/api/v1/edge/state").status_code == 401
    bearer = world.client("admin").get("/api/v1/edge/state")
    assert bearer.status_code == 401
    assert Device.objects.filter(state=DeviceState.REVOKED).count() == 0

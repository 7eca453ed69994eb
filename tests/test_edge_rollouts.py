"""Phased rollouts through the API, with devices reporting through the device
API: waves by count and percent, the next wave only once enough of the
current one is healthy on the new bundle, a failing wave halted and rolled
back, promote and abort, a device offline during the rollout getting the
current desired bundle when it polls again, and the edge deployment's health."""
from __future__ import annotations

import json

import pytest

from deployments.audit import Actor
from deployments.models import AuditEvent
from deployments.patterns.base import get_pattern
from edge import actions
from edge.auth import flush_last_seen, forget_last_seen
from edge.models import DeviceGroup

from .edge_server_support import bundle_bytes, device_client, enrol, enrolment_token
from .factories import AgentFactory, DeploymentFactory


@pytest.fixture
def fleet(world, tmp_path, settings):
    settings.HANGAR_EDGE_BUNDLE_DIR = tmp_path / "bundles"
    # Last-seen is written only by the tests' flush_last_seen(): the timer's flush
    # runs in a thread of its own connection, which cannot see this test's
    # uncommitted devices, and on a slow machine it took the batch first (CI saw
    # every device "offline").
    settings.HANGAR_EDGE_LAST_SEEN_FLUSH_S = 3600
    forget_last_seen()
    actor = Actor(user=world.users["operator"])
    deployment = DeploymentFactory(agent=AgentFactory(team=world.team, slug="sensors",
                                                      pattern="edge"), target=world.target)
    group = actions.create_group(world.team, name="floor", deployment=deployment, actor=actor)
    token = enrolment_token(group, world.users["operator"], uses=10)
    devices = [enrol(token, f"dev-{i}") for i in range(10)]
    v1 = actions.upload_bundle(world.team, version="v1", chunks=[bundle_bytes("v1")],
                               actor=actor)
    v2 = actions.upload_bundle(world.team, version="v2", chunks=[bundle_bytes("v2")],
                               actor=actor)
    yield {"group": group, "devices": devices, "v1": v1, "v2": v2, "deployment": deployment,
           "api": world.client("operator")}
    forget_last_seen()


def start(fleet, bundle, waves, **extra):
    response = fleet["api"].post("/api/v1/edge/rollouts", data=json.dumps(
        {"group_id": fleet["group"].pk, "bundle_id": bundle.pk, "waves": waves, **extra}),
        content_type="application/json")
    assert response.status_code == 201, response.content
    return response.json()


def rollout(fleet, rollout_id):
    return fleet["api"].get(f"/api/v1/edge/rollouts/{rollout_id}").json()


def desired(device) -> str | None:
    bundle = device_client(device["device_token"]).get("/api/v1/edge/state").json()["bundle"]
    return bundle and bundle["version"]


def report(device, health="Healthy", phase="running", *, refused=()):
    state = device_client(device["device_token"]).get("/api/v1/edge/state").json()
    bundle = state["bundle"] or {}
    body = {"phase": phase, "health": health, "version": bundle.get("version"),
            "digest": bundle.get("digest"),
            "refused": [{"digest": d, "reason": "wrongly signed"} for d in refused]}
    response = device_client(device["device_token"]).post(
        "/api/v1/edge/status", data=json.dumps(body), content_type="application/json")
    assert response.status_code == 204


def test_waves_advance_only_when_healthy_then_the_group_runs_the_bundle(fleet):
    devices = fleet["devices"]
    first = start(fleet, fleet["v1"], [{"count": 2}, {"percent": 30}, {"percent": 100}],
                  health_threshold=100)
    assert [w["total"] for w in first["waves"]] == [2, 3, 5]
    assert [desired(d) for d in devices] == ["v1"] * 2 + [None] * 8
    report(devices[0])
    assert rollout(fleet, first["id"])["current_wave"] == 0  # 1 of 2 healthy: not yet
    report(devices[1], health="Progressing", phase="starting")
    assert rollout(fleet, first["id"])["current_wave"] == 0
    report(devices[1])
    now = rollout(fleet, first["id"])
    assert now["current_wave"] == 1 and now["waves"][0]["status"] == "healthy"
    assert [desired(d) for d in devices] == ["v1"] * 5 + [None] * 5
    for d in devices[2:5]:
        report(d)
    for d in devices[5:]:
        report(d)
    done = rollout(fleet, first["id"])
    assert done["status"] == "succeeded", done
    assert DeviceGroup.objects.get(pk=fleet["group"].pk).bundle == fleet["v1"]
    late = enrol(enrolment_token(fleet["group"], None, uses=1), "late")
    assert desired(late) == "v1"  # a device enrolled afterwards gets the group's bundle
    assert AuditEvent.objects.filter(action="edge.rollout.advance").count() == 3


def test_a_crashing_wave_halts_and_rolls_back_to_the_previous_bundle(fleet):
    devices = fleet["devices"]
    v1 = start(fleet, fleet["v1"], [{"percent": 100}])
    for d in devices:
        report(d)
    assert rollout(fleet, v1["id"])["status"] == "succeeded"
    v2 = start(fleet, fleet["v2"], [{"count": 4}, {"percent": 100}], failure_threshold=50)
    assert [desired(d) for d in devices[:5]] == ["v2"] * 4 + ["v1"]
    report(devices[0], health="Degraded", phase="crashlooping")
    assert rollout(fleet, v2["id"])["status"] == "running"  # 1 of 4 < 50 %
    report(devices[1], health="Missing", phase="idle", refused=[fleet["v2"].digest])
    halted = rollout(fleet, v2["id"])
    assert halted["status"] == "failed" and halted["waves"][0]["status"] == "failed"
    assert "2 of 4 devices failed on v2; rolled back to v1" in halted["reason"]
    assert [desired(d) for d in devices] == ["v1"] * 10
    assert halted["waves"][1]["status"] == "pending"


def test_promote_and_abort(fleet):
    devices = fleet["devices"]
    r = start(fleet, fleet["v1"], [{"count": 1}, {"count": 1}, {"percent": 100}])
    promoted = fleet["api"].post(f"/api/v1/edge/rollouts/{r['id']}/promote").json()
    assert promoted["current_wave"] == 1 and promoted["waves"][0]["status"] == "healthy"
    assert [desired(d) for d in devices[:3]] == ["v1", "v1", None]
    aborted = fleet["api"].post(f"/api/v1/edge/rollouts/{r['id']}/abort").json()
    assert aborted["status"] == "aborted"
    assert [desired(d) for d in devices] == [None] * 10
    again = fleet["api"].post(f"/api/v1/edge/rollouts/{r['id']}/promote")
    assert again.status_code == 409 and "aborted" in again.json()["detail"]


def test_bad_rollouts_are_422_naming_the_field(fleet):
    api = fleet["api"]
    for body, field in (({"waves": []}, "waves"), ({"waves": [{"percent": 0}]}, "waves.0"),
                        ({"waves": [{"percent": 10, "count": 2}]}, "waves.0"),
                        ({"waves": [{"count": 1}], "failure_threshold": 0},
                         "failure_threshold")):
        response = api.post("/api/v1/edge/rollouts", data=json.dumps(
            {"group_id": fleet["group"].pk, "bundle_id": fleet["v1"].pk, **body}),
            content_type="application/json")
        assert response.status_code == 422, body
        assert field in json.dumps(response.json()["detail"]), response.json()
    start(fleet, fleet["v1"], [{"percent": 100}])
    clash = api.post("/api/v1/edge/rollouts", data=json.dumps(
        {"group_id": fleet["group"].pk, "bundle_id": fleet["v2"].pk,
         "waves": [{"percent": 100}]}), content_type="application/json")
    assert clash.status_code == 409


def test_an_offline_device_gets_the_current_bundle_when_back(fleet):
    devices = fleet["devices"]
    offline = devices[9]
    tag = device_client(offline["device_token"]).get("/api/v1/edge/state")["ETag"]
    r = start(fleet, fleet["v1"], [{"percent": 50}, {"percent": 100}], health_threshold=80)
    for d in devices[:5]:
        report(d)
    for d in devices[5:9]:
        report(d)
    done = rollout(fleet, r["id"])
    assert done["status"] == "succeeded" and done["waves"][1]["pending"] == 1
    back = device_client(offline["device_token"]).get("/api/v1/edge/state",
                                                      headers={"If-None-Match": tag})
    assert back.status_code == 200 and back.json()["bundle"]["version"] == "v1"


def test_edge_deployment_health_counts_devices(fleet, settings):
    devices = fleet["devices"]
    start(fleet, fleet["v1"], [{"percent": 100}])
    for d in devices[:7]:
        report(d)
    report(devices[7], health="Degraded", phase="crashlooping")
    flush_last_seen()  # devices 0-7 polled and reported; 8 and 9 polled at enrolment only
    from django.utils import timezone

    from edge.models import Device

    Device.objects.filter(pk__in=[devices[8]["device_id"], devices[9]["device_id"]]).update(
        last_seen=timezone.now() - timezone.timedelta(hours=1))
    deployment = fleet["deployment"]
    verdict = get_pattern("edge").rollup(deployment, [], is_current=lambda r: True,
                                         unreachable={})
    assert verdict.reason == "7 of 10 devices on v1; 1 failed; 2 offline"
    assert verdict.health == "Degraded"

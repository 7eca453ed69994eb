"""The fleet pages' role checks through Django's test client: every page for
a viewer, writes refused to a viewer (403) with nothing changed, another
team's device or rollout a 404, the login page for anonymous callers."""
from __future__ import annotations

import pytest
from django.test import Client

from deployments.audit import Actor
from deployments.models import AuditEvent
from edge import actions
from edge.models import Device, EnrolmentToken

from .edge_server_support import bundle_bytes, enrol, enrolment_token


@pytest.fixture
def fleet(world, tmp_path, settings):
    settings.HANGAR_EDGE_BUNDLE_DIR = tmp_path / "bundles"
    actor = Actor(user=world.users["operator"])
    group = actions.create_group(world.team, name="floor", actor=actor)
    device = enrol(enrolment_token(group, world.users["operator"]), "till")
    v1 = actions.upload_bundle(world.team, version="v1", chunks=[bundle_bytes()], actor=actor)
    rollout = actions.start_rollout(group, v1, waves=[{"count": 1}], actor=actor)
    return {"group": group, "device": device["device_id"], "rollout": rollout.pk}


def as_user(world, who) -> Client:
    client = Client()
    client.force_login(world.users[who])
    return client


def pages(fleet):
    return ["/edge/devices/", f"/edge/devices/{fleet['device']}/", "/edge/tokens/",
            "/edge/rollouts/", f"/edge/rollouts/{fleet['rollout']}/"]


def test_a_viewer_reads_every_page(world, fleet):
    client = as_user(world, "viewer")
    for url in pages(fleet):
        assert client.get(url).status_code == 200, url
    assert b"till" in client.get("/edge/devices/?q=til").content
    assert b"till" not in client.get("/edge/devices/?q=nothing").content


@pytest.mark.parametrize("url, data", [
    ("/edge/devices/{device}/quarantine/", {}), ("/edge/devices/{device}/revoke/", {}),
    ("/edge/rollouts/{rollout}/abort/", {}), ("/edge/rollouts/{rollout}/promote/", {}),
    ("/edge/tokens/", {"group": "{group}", "max_uses": 1, "expires_in_hours": 1}),
])
def test_writes_need_the_operator_role(world, fleet, url, data):
    ids = {"device": fleet["device"], "rollout": fleet["rollout"], "group": fleet["group"].pk}
    url = url.format(**ids)
    data = {k: (str(v).format(**ids)) for k, v in data.items()}
    before = (AuditEvent.objects.count(), EnrolmentToken.objects.count())
    assert as_user(world, "viewer").post(url, data).status_code == 403
    assert as_user(world, "outsider").post(url, data).status_code in (404, 422)
    assert (AuditEvent.objects.count(), EnrolmentToken.objects.count()) == before
    assert Device.objects.get(pk=fleet["device"]).state == "active"
    assert as_user(world, "operator").post(url, data).status_code in (201, 204, 302)


def test_outsiders_get_404_and_anonymous_the_login(world, fleet):
    outsider = as_user(world, "outsider")
    assert outsider.get(f"/edge/devices/{fleet['device']}/").status_code == 404
    assert outsider.get(f"/edge/rollouts/{fleet['rollout']}/").status_code == 404
    assert b"till" not in outsider.get("/edge/devices/").content
    assert Client().get("/edge/devices/").status_code == 302

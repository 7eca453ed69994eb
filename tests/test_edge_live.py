"""The edge API under the real web process (uvicorn, as in the Dockerfile) on
this test database: an operator uploads bundles and starts a rollout over
HTTP (422 without a manifest, 413 over the limit), devices enrol, pull with
ETag and long poll, download only their own bundle, report, upload OTLP
spans with their device token (attributed to the edge deployment, the same
spans twice stored once), get 401 on their next call once revoked (polls
answered before Django from the device cache included, revoked here or in
another process); last seen reaches the database without a write per poll."""
from __future__ import annotations

import json
import os
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests

from deployments.audit import Actor
from edge import actions
from edge.models import Device
from telemetry.ingest import forget_sources
from telemetry.models import Span

from .edge_server_support import bundle_bytes, device_public_key, tarball
from .factories import AgentFactory, DeploymentFactory
from .otlp_support import export, make_span, new_trace_id
from .processes import database_env, free_port, start_web, stop, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def server(tmp_path: Path):
    port = free_port()
    log = tmp_path / "web.log"
    env = database_env(HANGAR_EDGE_BUNDLE_DIR=str(tmp_path / "bundles"),
                       HANGAR_EDGE_MAX_BUNDLE_BYTES="8192", HANGAR_EDGE_POLL_INTERVAL_S="2",
                       HANGAR_EDGE_JITTER_S="1", HANGAR_EDGE_LAST_SEEN_FLUSH_MS="200",
                       HANGAR_LOG_LEVEL="WARNING")
    env.pop("HANGAR_EDGE_LONG_POLL_MAX_S", None)
    process = start_web(port, env, log)
    wait_for(f"http://127.0.0.1:{port}/healthz", process, log)
    yield f"http://127.0.0.1:{port}", log
    stop(process)


def test_the_device_api_under_uvicorn(world, server):
    base, log = server
    forget_sources()
    world.client("operator")
    operator = {"Authorization": f"Bearer {world.tokens[('operator', 'admin')]}"}
    deployment = DeploymentFactory(agent=AgentFactory(team=world.team, slug="sensors",
                                                      pattern="edge"), target=world.target)
    group = actions.create_group(world.team, name="floor", deployment=deployment,
                                 actor=Actor(user=world.users["operator"]))

    def post_bundle(data: bytes, version: str):
        return requests.post(f"{base}/api/v1/edge/bundles", headers=operator,
                             data={"team_id": world.team.pk, "version": version},
                             files={"bundle": ("b.tar.gz", data, "application/gzip")},
                             timeout=30)

    no_manifest = post_bundle(tarball({"main.py": b"print(1)\n"}), "v0")
    assert no_manifest.status_code == 422 and "manifest" in no_manifest.json()["detail"]
    big = post_bundle(bundle_bytes("v0") + os.urandom(9000), "v0")
    assert big.status_code == 413, big.text
    v1_data = bundle_bytes("v1")
    v1 = post_bundle(v1_data, "v1")
    assert v1.status_code == 201, v1.text
    v1 = v1.json()

    token = requests.post(f"{base}/api/v1/edge/tokens", headers=operator, timeout=10,
                          json={"group_id": group.pk, "max_uses": 2}).json()["token"]

    def enrol(name):
        return requests.post(f"{base}/api/v1/edge/enrol", timeout=10, json={
            "token": token, "public_key": device_public_key(), "name": name})

    a, b = enrol("a").json(), enrol("b").json()
    used_up = enrol("c")
    assert used_up.status_code == 401 and "used up" in used_up.json()["detail"]
    dev_a = {"Authorization": f"Device {a['device_token']}"}
    dev_b = {"Authorization": f"Device {b['device_token']}"}

    first = requests.get(f"{base}/api/v1/edge/state", headers=dev_a, timeout=10)
    assert first.status_code == 200 and first.json()["bundle"] is None
    assert first.json()["poll_interval_s"] == 2 and first.json()["jitter_s"] == 1
    tag = first.headers["ETag"]
    assert requests.get(f"{base}/api/v1/edge/state", timeout=10,
                        headers={**dev_a, "If-None-Match": tag}).status_code == 304

    # A long poll answers as soon as the state changes (a rollout reaches device a).
    answers = []
    waiter = threading.Thread(target=lambda: answers.append(requests.get(
        f"{base}/api/v1/edge/state?wait=20", headers={**dev_a, "If-None-Match": tag},
        timeout=60)))
    waiter.start()
    time.sleep(1)
    rollout = requests.post(f"{base}/api/v1/edge/rollouts", headers=operator, timeout=10,
                            json={"group_id": group.pk, "bundle_id": v1["id"],
                                  "waves": [{"count": 1}, {"percent": 100}]})
    assert rollout.status_code == 201, rollout.text
    waiter.join(timeout=40)
    assert answers and answers[0].status_code == 200
    bundle = answers[0].json()["bundle"]
    assert bundle["version"] == "v1" and answers[0].headers["ETag"] != tag

    mine = requests.get(base + bundle["url"], headers=dev_a, timeout=10)
    assert mine.status_code == 200 and mine.content == v1_data
    assert requests.get(base + bundle["url"], headers=dev_b, timeout=10).status_code == 404
    assert requests.get(f"{base}/api/v1/edge/state", headers=dev_b,
                        timeout=10).json()["device_id"] == b["device_id"]

    status = requests.post(f"{base}/api/v1/edge/status", headers=dev_a, timeout=10, json={
        "phase": "running", "health": "Healthy", "version": "v1", "digest": bundle["digest"],
        "usage": {"cpu_percent": 0.5, "memory_bytes": 1 << 20}, "refused": [],
        "buffered": 2, "dropped": 0})
    assert status.status_code == 204
    progress = requests.get(f"{base}/api/v1/edge/rollouts/{rollout.json()['id']}",
                            headers=operator, timeout=10).json()
    assert progress["current_wave"] == 1  # wave 1 (device a) healthy: wave 2 started

    # Spans with the device token: the edge deployment's, named after the device, once.
    trace = new_trace_id()
    spans = [make_span(trace_id=trace, name=f"edge.sample {i}") for i in range(5)]
    body = export(spans, instance="claimed-by-device").SerializeToString()
    for _ in range(2):
        sent = requests.post(f"{base}/v1/traces", data=body, timeout=10, headers={
            **dev_a, "Content-Type": "application/x-protobuf"})
        assert sent.status_code == 200, sent.text
    stored = Span.objects.filter(trace_id=uuid.UUID(bytes=trace))
    assert stored.count() == 5
    assert set(stored.values_list("deployment_id", "instance")) == {
        (deployment.pk, f"device-{a['device_id']}")}

    deadline = time.monotonic() + 20
    while Device.objects.get(pk=a["device_id"]).last_seen is None:
        assert time.monotonic() < deadline, "last seen never flushed:\n" + log.read_text()
        time.sleep(0.2)

    # Unchanged polls are answered before Django from the process's device cache;
    # an unknown token there is a 401 like anywhere else.
    tag_a = requests.get(f"{base}/api/v1/edge/state", headers=dev_a, timeout=10).headers["ETag"]
    for _ in range(3):
        assert requests.get(f"{base}/api/v1/edge/state", timeout=10,
                            headers={**dev_a, "If-None-Match": tag_a}).status_code == 304
    unknown = requests.get(f"{base}/api/v1/edge/state", timeout=10, headers={
        "Authorization": "Device hgd_nobody", "If-None-Match": tag_a})
    assert unknown.status_code == 401 and "Unknown" in unknown.json()["detail"]

    # Revoked: the very next call of every kind is refused, a cached poll and an
    # upload included.
    revoked = requests.post(f"{base}/api/v1/edge/devices/{a['device_id']}/revoke",
                            headers=operator, timeout=10)
    assert revoked.status_code == 200
    upload = requests.post(f"{base}/v1/traces", data=body, timeout=10, headers={
        **dev_a, "Content-Type": "application/x-protobuf"})
    assert upload.status_code == 401 and b"revoked" in upload.content
    for answer in (requests.get(f"{base}/api/v1/edge/state", timeout=10,
                                headers={**dev_a, "If-None-Match": tag_a}),
                   requests.get(f"{base}/api/v1/edge/state", headers=dev_a, timeout=10),
                   requests.get(base + bundle["url"], headers=dev_a, timeout=10),
                   requests.post(f"{base}/api/v1/edge/status", headers=dev_a, json={},
                                 timeout=10)):
        assert answer.status_code == 401 and "revoked" in json.dumps(answer.json())

    # Revoked by another process (here the test's, as another web process would):
    # the server hears it from PostgreSQL, refuses device b's held long poll and
    # its cached poll too.
    tag_b = requests.get(f"{base}/api/v1/edge/state", headers=dev_b, timeout=10).headers["ETag"]
    assert requests.get(f"{base}/api/v1/edge/state", timeout=10,
                        headers={**dev_b, "If-None-Match": tag_b}).status_code == 304
    held = []
    waiter = threading.Thread(target=lambda: held.append(requests.get(
        f"{base}/api/v1/edge/state?wait=30", headers={**dev_b, "If-None-Match": tag_b},
        timeout=60)))
    waiter.start()
    time.sleep(1)
    actions.revoke_device(Device.objects.get(pk=b["device_id"]),
                          actor=Actor(user=world.users["operator"]))
    waiter.join(timeout=60)
    assert held and held[0].status_code == 401  # the held long poll, refused
    deadline = time.monotonic() + 10
    while (poll := requests.get(f"{base}/api/v1/edge/state", timeout=10, headers={
            **dev_b, "If-None-Match": tag_b})).status_code == 304:
        assert time.monotonic() < deadline, "the revocation never reached the server"
        time.sleep(0.01)
    assert poll.status_code == 401 and "revoked" in poll.json()["detail"]

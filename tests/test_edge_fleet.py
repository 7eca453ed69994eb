"""The edge fleet end to end: real ``hangar-edge`` processes (``python -m
hangar_edge``, each with its own data directory) against Hangar served by
uvicorn on this test's PostgreSQL database, driven through the operator API
with a bearer token, as an operator's automation would.

* twenty devices enrol with one token and run v1; v2 rolls out in waves (2
  devices, then half, then the rest); a crashing v3 halts its first wave and
  those devices are rolled back to v2 (the others never see v3);
* a device whose link to Hangar is cut (a TCP proxy in between, stopped) keeps
  running its program and buffering for three days of its injected clock,
  and when the link is back every span it buffered is stored exactly once
  (some upload answers are swallowed on the way, so it re-sends);
* a tampered and a wrongly signed bundle are refused and reported, never
  unpacked, the device keeps running what it ran;
* a revoked device gets 401 and its agent stops; one device's token cannot
  fetch another group's bundle.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import requests
from django.db import connection
from hangar_edge import otlp

from deployments.actions.tokens import create_token
from deployments.audit import Actor
from edge.models import Bundle, BundleSignature, Device
from telemetry.models import Span

from .edge_support import AgentProcess, Proxy, sensor_bundle, wait_for
from .factories import (
    AgentFactory,
    DeploymentFactory,
    MembershipFactory,
    TargetFactory,
    TeamFactory,
    UserFactory,
    VersionFactory,
)
from .processes import database_env, free_port, start_web, stop
from .processes import wait_for as wait_for_http

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
FLEET = 20


class Hangar:
    """The live server and an admin's bearer token for its API."""

    def __init__(self, url: str, token: str, team, log: Path, bundle_dir: Path):
        self.url, self.team, self.log, self.bundle_dir = url, team, log, bundle_dir
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {token}"

    def call(self, method: str, path: str, expect: int = 200, **kwargs):
        response = self.http.request(method, f"{self.url}/api/v1{path}", timeout=30, **kwargs)
        assert response.status_code == expect, (path, response.status_code, response.text)
        return response.json() if response.content else None

    def group(self, name: str) -> dict:
        agent = AgentFactory(team=self.team, slug=f"sensor-{name}", pattern="edge")
        deployment = DeploymentFactory(
            agent=agent, version=VersionFactory(agent=agent, number=1),
            target=TargetFactory(team=self.team, name=f"fleet-{name}", kind="edge"))
        return self.call("POST", "/edge/groups", 201, json={
            "team_id": self.team.pk, "name": name, "deployment_id": deployment.pk})

    def enrolment_token(self, group: dict, uses: int) -> str:
        return self.call("POST", "/edge/tokens", 201, json={
            "group_id": group["id"], "name": "fleet", "max_uses": uses})["token"]

    def bundle(self, version: str, data: bytes) -> dict:
        return self.call("POST", "/edge/bundles", 201, data={
            "team_id": self.team.pk, "version": version},
            files={"bundle": (f"{version}.tar.gz", data, "application/gzip")})

    def rollout(self, group: dict, bundle: dict, waves: list, **thresholds) -> dict:
        return self.call("POST", "/edge/rollouts", 201, json={
            "group_id": group["id"], "bundle_id": bundle["id"], "waves": waves, **thresholds})

    def get_rollout(self, rollout: dict) -> dict:
        return next(r for r in self.call("GET", "/edge/rollouts") if r["id"] == rollout["id"])

    def devices(self, group: dict) -> list[dict]:
        return self.call("GET", f"/edge/devices?group_id={group['id']}")


@pytest.fixture
def hangar(tmp_path):
    team = TeamFactory(slug="fleet", name="Fleet")
    admin = UserFactory(username="fleet-admin")
    MembershipFactory(team=team, user=admin, role="admin")
    _, token = create_token(team, name="automation", scope="admin", expires_at=None,
                            actor=Actor(user=admin))
    port = free_port()
    log = tmp_path / "web.log"
    bundle_dir = tmp_path / "server-bundles"
    env = database_env(HANGAR_EDGE_POLL_INTERVAL_S="1", HANGAR_EDGE_JITTER_S="1",
                       HANGAR_EDGE_BUNDLE_DIR=str(bundle_dir),
                       HANGAR_EDGE_LAST_SEEN_FLUSH_MS="500", HANGAR_LOG_LEVEL="WARNING")
    web = start_web(port, env, log)
    wait_for_http(f"http://127.0.0.1:{port}/healthz", web, log)
    yield Hangar(f"http://127.0.0.1:{port}", token, team, log, bundle_dir)
    stop(web)


@pytest.fixture
def agents(tmp_path):
    started: list[AgentProcess] = []

    def start(server: str, token: str, name: str, *extra: str) -> AgentProcess:
        agent = AgentProcess(tmp_path / "devices", name, server, token, *extra)
        started.append(agent.start())
        return agent

    yield start
    for agent in started:
        agent.stop()


def device_of(agent: AgentProcess) -> Device:
    return Device.objects.get(pk=agent.identity()["device_id"])


def on_version(hangar: Hangar, group: dict, version: str, count: int, health="Healthy"):
    def check():
        rows = [d for d in hangar.devices(group)
                if d["version"] == version and d["health"] == health]
        return len(rows) >= count and rows
    return check


def spans_of(device_id: int) -> tuple[int, int]:
    """(rows, distinct span ids) Hangar stored for a device."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*), count(DISTINCT (trace_id, span_id)) FROM telemetry_span "
                       "WHERE instance = %s", [f"device-{device_id}"])
        return cursor.fetchone()


def test_twenty_devices_enrol_run_v1_and_roll_out_v2_in_waves_and_a_crashing_v3_rolls_back(
        hangar, agents):
    group = hangar.group("shop-floor")
    v1 = hangar.bundle("v1", sensor_bundle(SENSOR_INTERVAL_S="1", SENSOR_RELEASE="v1"))
    first = hangar.rollout(group, v1, [{"percent": 100}])  # an empty group: done at once
    assert hangar.get_rollout(first)["status"] == "succeeded"
    token = hangar.enrolment_token(group, uses=FLEET)
    fleet = [agents(hangar.url, token, f"dev-{n:02d}") for n in range(FLEET)]

    wait_for(on_version(hangar, group, "v1", FLEET), "20 devices healthy on v1",
             on_fail=lambda: fleet[0].tail() + json.dumps(hangar.devices(group))[:3000])
    devices = hangar.devices(group)
    assert len({d["id"] for d in devices}) == FLEET
    assert all(d["online"] and d["state"] == "active" for d in devices)
    # A 21st enrolment with the used-up token is refused, saying why.
    refused = requests.post(f"{hangar.url}/api/v1/edge/enrol", timeout=10, json={
        "token": token, "public_key": "A" * 43 + "=", "name": "late", "labels": {}})
    assert refused.status_code == 401 and "used up" in refused.json()["detail"]

    # v2 in three waves; each starts only once the previous one is healthy on v2.
    v2 = hangar.bundle("v2", sensor_bundle(SENSOR_INTERVAL_S="1", SENSOR_RELEASE="v2"))
    rollout = hangar.rollout(group, v2, [{"count": 2}, {"percent": 50}, {"percent": 100}],
                             health_threshold=100, failure_threshold=50)
    wait_for(lambda: hangar.get_rollout(rollout)["status"] == "succeeded", "v2 rolled out",
             timeout=180, on_fail=lambda: json.dumps(hangar.get_rollout(rollout)))
    waves = hangar.get_rollout(rollout)["waves"]
    assert [w["total"] for w in waves] == [2, 10, 8]
    assert all(w["status"] == "healthy" and w["healthy"] == w["total"] for w in waves)
    wait_for(on_version(hangar, group, "v2", FLEET), "20 devices healthy on v2")
    # Each wave started after the one before it was healthy (the devices' timelines).
    started = {}
    for agent in fleet:
        device = device_of(agent)
        started[device.pk] = device.events.filter(kind="desired", message__contains="v2").last()
    order = sorted(started.values(), key=lambda e: e.at)
    assert "wave 1" in order[0].message and "wave 3" in order[-1].message

    # v3 crashes a few seconds after it starts: the first wave halts and rolls back.
    v3 = hangar.bundle("v3", sensor_bundle(SENSOR_INTERVAL_S="1", SENSOR_FAIL_AFTER_S="1"))
    bad = hangar.rollout(group, v3, [{"count": 4}, {"percent": 100}], failure_threshold=50)
    wait_for(lambda: hangar.get_rollout(bad)["status"] == "failed", "v3 halted", timeout=120,
             on_fail=lambda: json.dumps(hangar.get_rollout(bad)))
    halted = hangar.get_rollout(bad)
    assert halted["waves"][0]["status"] == "failed" and halted["waves"][1]["status"] == "pending"
    assert "rolled back to v2" in halted["reason"]
    wait_for(on_version(hangar, group, "v2", FLEET), "every device healthy on v2 again",
             timeout=120, on_fail=lambda: json.dumps(hangar.devices(group))[:3000])
    reached = [agent for agent in fleet
               if device_of(agent).events.filter(message__contains="v3").exists()]
    assert len(reached) == 4
    crashed = []
    for agent in reached:
        assert agent.status()["version"] == "v2"  # ran v3, and is back
        log = (agent.data_dir / "logs" / "v3.log").read_text()
        assert "exporting" in log
        if "simulated failure" in log:
            crashed.append(device_of(agent).pk)
    assert len(crashed) >= 2  # the failure threshold: half the wave
    # Each crash is a run record in Hangar: the process span, its error and exit code.
    wait_for(lambda: all(Span.objects.filter(instance=f"device-{pk}", name="edge.process",
                                             status_code=2).exists() for pk in crashed),
             "the crashes' run records uploaded")
    for agent in fleet:
        if agent not in reached:
            assert not (agent.data_dir / "logs" / "v3.log").exists()
    # Every agent process is still the one that enrolled: none restarted or died.
    assert all(agent.process.poll() is None for agent in fleet)


def test_a_device_cut_off_for_three_days_keeps_running_and_every_span_arrives_once(
        hangar, agents):
    group = hangar.group("remote")
    v1 = hangar.bundle("v1", sensor_bundle(SENSOR_INTERVAL_S="0.5"))
    hangar.rollout(group, v1, [{"percent": 100}])
    token = hangar.enrolment_token(group, uses=1)
    proxy = Proxy(int(hangar.url.rsplit(":", 1)[1]))
    try:
        agent = agents(proxy.url, token, "remote-1", "--record-interval", "3600")
        wait_for(on_version(hangar, group, "v1", 1), "the device healthy on v1",
                 on_fail=agent.tail)
        device = device_of(agent)
        wait_for(lambda: spans_of(device.pk)[0] > 0, "its first spans in Hangar")
        program = (agent.data_dir / "logs" / "v1.log").read_text().count("exporting")

        proxy.down()  # the link is gone
        for _hour in range(72):  # three days on the device's clock
            agent.advance(3600)
            time.sleep(0.25)  # the agent's timers see each hour go by
        offline = agent.status()["buffer"]
        assert offline["buffered"] >= 72  # at least one heartbeat record an hour
        assert agent.process.poll() is None
        log = (agent.data_dir / "logs" / "v1.log").read_text()
        assert log.count("exporting") == program  # the same program kept running
        assert "export failed" not in log  # its exports went to the local buffer

        proxy.cut_uploads(2)  # Hangar stores two uploads whose answers never arrive
        proxy.up()
        wait_for(lambda: agent.status()["buffer"]["buffered"] == 0 and
                 agent.status()["buffer"]["uploaded"] > offline["accepted"],
                 "the buffer drained", timeout=120, on_fail=agent.tail)
        assert proxy.cut_count == 2
        agent.stop()  # nothing more is produced; what it holds is flushed
        final = agent.status()["buffer"]
        assert final["dropped"] == final["rejected"] == final["buffered"] == 0
        rows, distinct = spans_of(device.pk)
        assert rows == distinct == final["uploaded"] == final["accepted"]
        heartbeats = Span.objects.filter(instance=f"device-{device.pk}",
                                         name="edge.heartbeat").count()
        # A heartbeat record for (nearly) every simulated hour: on a loaded machine
        # the agent's timer may see two hours go by at once and write one record.
        assert heartbeats >= 48
    finally:
        proxy.close()


def test_tampered_and_wrongly_signed_bundles_are_refused_and_reported(hangar, agents):
    group = hangar.group("guarded")
    v1 = hangar.bundle("v1", sensor_bundle(SENSOR_INTERVAL_S="1"))
    hangar.rollout(group, v1, [{"percent": 100}])
    token = hangar.enrolment_token(group, uses=2)
    one, two = agents(hangar.url, token, "guarded-1"), agents(hangar.url, token, "guarded-2")
    wait_for(on_version(hangar, group, "v1", 2), "both devices on v1")

    # Tampered: the file on the server's disk changes after Hangar signed it.
    v2 = hangar.bundle("v2", sensor_bundle(SENSOR_INTERVAL_S="1", SENSOR_RELEASE="v2"))
    stored = hangar.bundle_dir / f"{v2['digest'].removeprefix('sha256:')}.tar.gz"
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0x01
    stored.write_bytes(bytes(data))
    rollout = hangar.rollout(group, v2, [{"count": 1}, {"percent": 100}], failure_threshold=100)
    wait_for(lambda: hangar.get_rollout(rollout)["status"] == "failed",
             "the wave failed on the refusal", on_fail=one.tail)
    refusing = next(a for a in (one, two) if a.status()["refused"])
    [refusal] = refusing.status()["refused"]
    assert refusal["digest"] == v2["digest"] and refusal["reason"].startswith("tampered")
    device = device_of(refusing)
    assert device.version == "v1" and device.health == "Healthy"
    assert device.events.filter(kind="refused", message__contains="tampered").exists()
    assert not (refusing.data_dir / "bundles" / v2["digest"][7:]).exists()  # never unpacked
    assert not (refusing.data_dir / "logs" / "v2.log").exists()  # never run

    # Wrongly signed: the signature Hangar hands out is not the team key's.
    v3 = hangar.bundle("v3", sensor_bundle(SENSOR_INTERVAL_S="1", SENSOR_RELEASE="v3"))
    row = BundleSignature.objects.get(bundle_id=v3["id"])
    other = BundleSignature.objects.get(bundle=Bundle.objects.get(pk=v1["id"]))
    BundleSignature.objects.filter(pk=row.pk).update(signature=other.signature)
    rollout = hangar.rollout(group, v3, [{"percent": 100}], failure_threshold=50)
    wait_for(lambda: hangar.get_rollout(rollout)["status"] == "failed", "v3 refused")
    # The wave halts at the first refusal (threshold 50 %): the other device may
    # have been rolled back before it was ever offered v3. Neither runs it.
    refused = 0
    for agent in (one, two):
        reasons = {r["digest"]: r["reason"] for r in agent.status()["refused"]}
        if v3["digest"] in reasons:
            refused += 1
            assert reasons[v3["digest"]].startswith("wrongly signed")
        assert agent.status()["version"] == "v1"
        assert not (agent.data_dir / "logs" / "v3.log").exists()
    assert refused >= 1


def test_revoked_device_gets_401_and_a_device_cannot_read_another_groups_bundle(
        hangar, agents):
    north, south = hangar.group("north"), hangar.group("south")
    hangar.rollout(north, hangar.bundle("n1", sensor_bundle(SENSOR_RELEASE="n")),
                   [{"percent": 100}])
    south_bundle = hangar.bundle("s1", sensor_bundle(SENSOR_RELEASE="s"))
    hangar.rollout(south, south_bundle, [{"percent": 100}])
    a = agents(hangar.url, hangar.enrolment_token(north, 1), "north-1")
    b = agents(hangar.url, hangar.enrolment_token(south, 1), "south-1")
    wait_for(on_version(hangar, north, "n1", 1), "north on n1")
    wait_for(on_version(hangar, south, "s1", 1), "south on s1")
    a_token, b_token = a.identity()["device_token"], b.identity()["device_token"]

    def device_get(token: str, path: str) -> requests.Response:
        return requests.get(f"{hangar.url}/api/v1/edge/{path}", timeout=10,
                            headers={"Authorization": f"Device {token}"})

    assert device_get(b_token, f"bundles/{south_bundle['digest']}").status_code == 200
    assert device_get(a_token, f"bundles/{south_bundle['digest']}").status_code == 404
    state = device_get(a_token, "state").json()
    assert state["device_id"] == a.identity()["device_id"]
    assert state["bundle"]["version"] == "n1"

    hangar.call("POST", f"/edge/devices/{a.identity()['device_id']}/revoke")
    assert a.process.wait(timeout=60) == 3  # the agent stops its program and exits
    assert "401" in a.tail() and "revoked" in a.tail()
    revoked = device_get(a_token, "state")
    assert revoked.status_code == 401 and "revoked" in revoked.json()["detail"]
    span = otlp.span(name="late", start_ns=time.time_ns(), end_ns=time.time_ns() + 1)
    body = otlp.join([otlp.Group(otlp.resource({"service.name": "x"}), otlp.scope("x"), [span])])

    def upload() -> int:
        return requests.post(f"{hangar.url}/v1/traces", data=body, timeout=10, headers={
            "Authorization": f"Device {a_token}",
            "Content-Type": "application/x-protobuf"}).status_code

    # Ingest remembers a device's credentials for a few seconds, then refuses it.
    wait_for(lambda: upload() == 401, "ingest refusing the revoked device", timeout=30)
    assert b.process.poll() is None and device_get(b_token, "state").status_code == 200
    assert not any(p for p in os.listdir("/proc") if p.isdigit() and _runs(p, a.data_dir))


def _runs(pid: str, data_dir: Path) -> bool:
    """Is process ``pid`` a program started from ``data_dir``'s bundles?"""
    try:
        return str(data_dir) in os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return False

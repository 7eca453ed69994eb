"""The gateway in front of a 3-replica deployment that the reconciler runs on
two real Docker hosts: the endpoints come from what the reconciler writes and
its live events; a ``docker kill`` fails only that replica's in-flight requests
(502 with a reason) and no new request reaches it; a 3 → 1 scale-down drains
(the removed replicas get no new requests, their in-flight ones finish) without
a dropped request."""
from __future__ import annotations

import threading
import time

import docker
import pytest
import requests

from deployments import actions
from deployments.audit import SYSTEM, Actor
from deployments.models import AuditEvent, Deployment, Instance
from deployments.reconciler import reconcile_deployment

from .docker_support import IMAGE, start_hosts
from .factories import AgentFactory, TargetFactory, VersionFactory
from .gateway_support import serves, start_gateway, wait_until
from .processes import database_env, free_port, stop

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="session")
def docker_urls():
    return start_hosts(2)


def converge(deployment, until, timeout=120):
    deadline = time.monotonic() + timeout
    while True:
        reconcile_deployment(deployment.pk)
        deployment.refresh_from_db()
        rows = list(Instance.objects.filter(deployment=deployment))
        if deployment.health == "Healthy" and until(rows):
            return rows
        if time.monotonic() > deadline:
            raise AssertionError(f"{deployment.health}: {deployment.health_reason}")
        time.sleep(0.5)


@pytest.fixture
def stack(world, docker_urls, settings, tmp_path):
    settings.HANGAR_PROGRESS_DEADLINE_S = 30
    agent = AgentFactory(team=world.team, slug="docked")
    version = VersionFactory(agent=agent, image=IMAGE, port=8080, cpu="0.3", memory_mb=128,
                             env={"AGENT_MODE": "realtime", "AGENT_LATENCY_MS": "1200",
                                  "AGENT_DRAIN_S": "10"})
    targets = [TargetFactory(team=world.team, name=f"gw-docker-{i}", kind="docker",
                             labels={"pool": "gw"}, connection={"url": url})
               for i, url in enumerate(docker_urls)]
    d = Deployment.objects.create(agent=agent, version=version, target=targets[0], replicas=3,
                                  placement={"pool": "gw"})
    port = free_port()
    gateway = start_gateway(port, database_env(), tmp_path / "gateway.log",
                            HANGAR_GATEWAY_REFRESH_S="5", HANGAR_GATEWAY_EJECT_S="600",
                            HANGAR_GATEWAY_CONCURRENT="none", HANGAR_GATEWAY_RATE_PER_S="none")
    _, plaintext = actions.create_token(world.team, name="docked", scope="read",
                                        expires_at=None, actor=Actor(user=world.users["admin"]))
    yield d, f"http://127.0.0.1:{port}/gw/acme/docked/production/invoke", {
        "Authorization": f"Bearer {plaintext}"}
    stop(gateway)
    Deployment.objects.filter(pk=d.pk).update(state="stopped")
    for _ in range(3):
        reconcile_deployment(d.pk)
    for url in docker_urls:
        client = docker.DockerClient(base_url=url)
        try:
            for c in client.containers.list(all=True, filters={"label": "hangar.managed=true"}):
                c.remove(force=True)
        finally:
            client.close()


def container_of(docker_urls, row):
    for url in docker_urls:
        client = docker.DockerClient(base_url=url)
        found = client.containers.list(filters={"label": f"hangar.instance={row.name}"})
        if found:
            return found[0]
    raise AssertionError(f"no container for {row.name}")


def calls(url, headers, count, results):
    def one():
        try:
            results.append(requests.post(url, json={"input": "hello"}, headers=headers,
                                         timeout=60))
        except requests.RequestException as exc:
            results.append(exc)
    threads = [threading.Thread(target=one) for _ in range(count)]
    for t in threads:
        t.start()
    return threads


def test_docker_kill_fails_only_its_in_flight_requests(stack, docker_urls):
    d, url, headers = stack
    rows = converge(d, lambda rows: len(rows) == 3)
    names = {r.name for r in rows}
    wait_until(lambda: {requests.post(url, json={"input": "x"}, headers=headers, timeout=30)
                        .headers.get("x-hangar-replica") for _ in range(9)} == names,
               timeout=90, what="every replica behind the gateway")
    victim = rows[0]
    results: list = []
    threads = calls(url, headers, 9, results)
    time.sleep(0.3)  # let them reach the replicas (1.2 s each)
    container_of(docker_urls, victim).kill()
    for t in threads:
        t.join()
    failed = [r for r in results if not (hasattr(r, "status_code") and r.status_code == 200)]
    assert failed, "the killed replica had requests in flight"
    for r in failed:
        assert r.status_code == 502 and victim.name in r.json()["detail"], r
    ok = [r for r in results if hasattr(r, "status_code") and r.status_code == 200]
    assert ok and all(r.headers["x-hangar-replica"] != victim.name for r in ok)
    after: list = []
    for t in calls(url, headers, 6, after):
        t.join()
    assert all(r.status_code == 200 and r.headers["x-hangar-replica"] != victim.name
               for r in after)


def test_scale_down_drains_without_a_dropped_request(stack):
    d, url, headers = stack
    converge(d, lambda rows: len(rows) == 3)
    wait_until(lambda: serves(url, headers), timeout=60, what="the gateway")
    results: list = []
    stop_traffic = threading.Event()

    def traffic():
        while not stop_traffic.is_set():
            for t in calls(url, headers, 3, results):
                t.join()

    runner = threading.Thread(target=traffic)
    runner.start()
    try:
        time.sleep(1)  # requests in flight on every replica
        actions.scale_deployment(d, replicas=1, actor=SYSTEM)
        converge(d, lambda rows: len(rows) == 1)
        time.sleep(1)
    finally:
        stop_traffic.set()
        runner.join()
    bad = [r if not hasattr(r, "status_code") else (r.status_code, r.text) for r in results
           if not hasattr(r, "status_code") or r.status_code != 200]
    assert len(results) >= 9 and bad == []
    (left,) = Instance.objects.filter(deployment=d)
    assert {r.headers["x-hangar-replica"] for r in results[-3:]} == {left.name}


def test_scale_to_zero_holds_the_request_and_records_the_cold_start(world, docker_urls,
                                                                    settings, tmp_path):
    import redis as redis_lib
    from django.conf import settings as live_settings

    settings.HANGAR_PROGRESS_DEADLINE_S = 30
    agent = AgentFactory(team=world.team, slug="sleepy")
    version = VersionFactory(agent=agent, image=IMAGE, port=8080, cpu="0.3", memory_mb=128,
                             env={"AGENT_MODE": "realtime"},
                             pattern_settings={"scale_to_zero_after_s": 2,
                                               "cold_start_wait_s": 90})
    target = TargetFactory(team=world.team, name="gw-zero", kind="docker",
                           connection={"url": docker_urls[0]})
    d = Deployment.objects.create(agent=agent, version=version, target=target, replicas=1)
    port = free_port()
    gateway = start_gateway(port, database_env(), tmp_path / "gateway.log",
                            HANGAR_GATEWAY_REFRESH_S="0.5")
    _, plaintext = actions.create_token(world.team, name="sleepy", scope="read",
                                        expires_at=None, actor=Actor(user=world.users["admin"]))
    headers = {"Authorization": f"Bearer {plaintext}"}
    url = f"http://127.0.0.1:{port}/gw/acme/sleepy/production/invoke"
    cold = f"gw:cold:{d.pk}"
    redis_lib.Redis.from_url(live_settings.REDIS_URL).delete(cold)
    try:
        converge(d, lambda rows: len(rows) == 1)
        assert serves(url, headers)
        # Idle: the gateway scales it to zero with the audited verb.
        wait_until(lambda: Deployment.objects.get(pk=d.pk).replicas == 0, timeout=60,
                   what="scale to zero")
        assert AuditEvent.objects.filter(object_type="deployment", object_id=str(d.pk),
                                         actor_label="gateway").exists()
        converge(d, lambda rows: rows == [])
        answers: list = []
        caller = threading.Thread(target=lambda: answers.append(requests.post(
            url, json={"input": "wake up"}, headers=headers, timeout=120)))
        caller.start()
        wait_until(lambda: Deployment.objects.get(pk=d.pk).replicas == 1, timeout=30,
                   what="the held request to wake the deployment")
        # The worker's part: converge until the replica is ready; the request is answered.
        deadline = time.monotonic() + 120
        while caller.is_alive() and time.monotonic() < deadline:
            reconcile_deployment(d.pk)
            time.sleep(0.2)
        caller.join(timeout=5)
        (answer,) = answers
        assert answer.status_code == 200, answer.text
        assert answer.json()["output"]
        recorded = redis_lib.Redis.from_url(live_settings.REDIS_URL).lrange(cold, 0, -1)
        assert len(recorded) == 1 and float(recorded[0]) > 0
    finally:
        stop(gateway)
        Deployment.objects.filter(pk=d.pk).update(state="stopped")
        for _ in range(3):
            reconcile_deployment(d.pk)

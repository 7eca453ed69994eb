"""The reconciler and the Docker driver against two real dockerd hosts."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import docker
import psycopg
import pytest
import requests
from django.db import connection

from deployments import actions
from deployments.audit import SYSTEM
from deployments.models import Deployment, DeploymentEvent, Instance
from deployments.reconciler import LOCK_CLASS, reconcile_deployment

from .docker_support import IMAGE, ROOT, restart_host, start_hosts
from .factories import AgentFactory, TargetFactory, VersionFactory

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="session")
def docker_urls():
    return start_hosts(2)


@pytest.fixture
def clients(docker_urls):
    found = [docker.DockerClient(base_url=url) for url in docker_urls]
    yield found
    for client in found:
        client.close()


def containers(clients, deployment_id) -> dict[str, list]:
    """Containers of a deployment per host index."""
    return {i: c.containers.list(all=True, filters={"label": f"hangar.deployment={deployment_id}"})
            for i, c in enumerate(clients)}


def count(clients, deployment_id) -> int:
    # One list call per host, no inspect per container: while a worker is still
    # converging, a container may vanish between the list and its inspect.
    label = {"label": f"hangar.deployment={deployment_id}"}
    return sum(len(c.api.containers(all=True, filters=label)) for c in clients)


def converge(deployment, health="Healthy", timeout=90, until=None):
    deadline = time.monotonic() + timeout
    while True:
        reconcile_deployment(deployment.pk)
        deployment.refresh_from_db()
        rows = list(Instance.objects.filter(deployment=deployment).select_related("target"))
        if deployment.health == health and (until is None or until(deployment, rows)):
            return rows
        if time.monotonic() > deadline:
            raise AssertionError(f"{deployment.health}: {deployment.health_reason}")
        time.sleep(0.5)


@pytest.fixture
def deployment(docker_urls, clients, settings):
    settings.HANGAR_RESTART_POLICY = {"attempts": 2, "interval_s": 120, "delay_s": 1,
                                      "max_delay_s": 2}
    settings.HANGAR_PROGRESS_DEADLINE_S = 15
    agent = AgentFactory(slug="ref")
    version = VersionFactory(agent=agent, image=IMAGE, port=8080, cpu="0.2", memory_mb=128,
                             env={"AGENT_MODE": "realtime"})
    targets = [TargetFactory(team=agent.team, name=f"docker-{i}", kind="docker",
                             labels={"pool": "test"}, connection={"url": url})
               for i, url in enumerate(docker_urls)]
    made = Deployment.objects.create(agent=agent, version=version, target=targets[0],
                                     replicas=3, placement={"pool": "test"})
    yield made
    Deployment.objects.filter(pk=made.pk).update(state="stopped")
    for _ in range(3):
        reconcile_deployment(made.pk)
    for client in clients:
        for c in client.containers.list(all=True, filters={"label": "hangar.managed=true"}):
            c.remove(force=True)


def test_three_replicas_spread_over_two_hosts(deployment, clients):
    rows = converge(deployment)
    assert deployment.health_reason == "3 of 3 replicas healthy"
    assert deployment.observed_generation == deployment.generation
    per_host = containers(clients, deployment.pk)
    assert sorted(len(v) for v in per_host.values()) == [1, 2]
    assert Counter(r.target.name for r in rows) == Counter(
        {f"docker-{i}": len(v) for i, v in per_host.items()})
    for row in rows:
        assert row.health == "Healthy" and row.phase == "running"
        answer = requests.post(f"http://{row.address}/invoke", json={"input": "hello"},
                               timeout=10)
        assert answer.status_code == 200 and answer.json()["instance"] == row.name
    labels = per_host[0][0].labels
    assert {"hangar.deployment", "hangar.instance", "hangar.generation"} <= set(labels)


def test_scale_up_and_down_converges_without_orphans(deployment, clients):
    converge(deployment)
    for replicas in (5, 1):
        actions.scale_deployment(deployment, replicas=replicas, actor=SYSTEM)
        converge(deployment, until=lambda d, rows, n=replicas: len(rows) == n
                 and d.observed_generation == d.generation)
        assert count(clients, deployment.pk) == replicas
        names = {c.labels["hangar.instance"] for cs in containers(clients, deployment.pk).values()
                 for c in cs}
        assert names == set(Instance.objects.filter(deployment=deployment)
                            .values_list("name", flat=True))


def test_killed_container_is_restarted_and_the_timeline_says_why(deployment, clients):
    rows = converge(deployment)
    victim = rows[0]
    host = next(c for cs in containers(clients, deployment.pk).values() for c in cs
                if c.labels["hangar.instance"] == victim.name)
    host.kill()
    converge(deployment, until=lambda d, rows: any(r.restarts for r in rows))
    victim.refresh_from_db()
    assert victim.restarts == 1 and victim.health == "Healthy"
    messages = list(DeploymentEvent.objects.filter(deployment=deployment, instance=victim.name)
                    .values_list("reason", "message"))
    assert ("Exited", f"{victim.name} exited with code 137 (killed); restarting in 1s") in messages
    assert any(reason == "Restarted" for reason, _ in messages)
    assert count(clients, deployment.pk) == 3


def test_dockerd_restart_readopts_instead_of_duplicating(deployment, clients):
    converge(deployment)
    before = {c.labels["hangar.instance"] for c in containers(clients, deployment.pk)[1]}
    assert before
    restart_host(1)
    converge(deployment, timeout=120,
             until=lambda d, rows: all(r.health == "Healthy" for r in rows) and len(rows) == 3)
    after = {c.labels["hangar.instance"] for c in containers(clients, deployment.pk)[1]}
    assert after == before
    assert count(clients, deployment.pk) == 3


@pytest.mark.parametrize("env,image,reason", [
    ({}, "hangar/does-not-exist:1", "image not found"),
    ({"AGENT_CRASH_AT_START": "1", "AGENT_EXIT_CODE": "4"}, IMAGE, "exited with code 4"),
    ({"AGENT_FAIL_READINESS": "1"}, IMAGE, "failed readiness: 503"),
])
def test_broken_versions_end_degraded_with_bounded_restarts(deployment, clients, env, image,
                                                           reason):
    version = VersionFactory(agent=deployment.agent, image=image, port=8080, cpu="0.2",
                             memory_mb=128, env={"AGENT_MODE": "realtime", **env})
    Deployment.objects.filter(pk=deployment.pk).update(version=version, replicas=1)
    rows = converge(deployment, health="Degraded", timeout=120,
                    until=lambda d, rows: reason in d.health_reason and all(
                        r.phase == "failed" or "readiness" in reason for r in rows))
    assert len(rows) == 1
    time.sleep(3)
    rows = converge(deployment, health="Degraded")
    assert len(rows) == 1 and rows[0].restarts <= 2  # the restart budget, then it stops
    assert count(clients, deployment.pk) <= 1


def test_two_reconciles_at_once_do_not_both_act(deployment, clients):
    # Another worker holds the deployment's lock: this pass must not act.
    params = connection.get_connection_params()
    with psycopg.connect(host=params["host"], port=params["port"], user=params["user"],
                         dbname=params["dbname"], autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s, %s)", [LOCK_CLASS, deployment.pk])
        assert reconcile_deployment(deployment.pk) == "busy"
        assert count(clients, deployment.pk) == 0
    # Two real passes racing: still exactly the desired count.
    from django.db import connections

    results = []

    def race():
        try:
            results.append(reconcile_deployment(deployment.pk))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=race) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert "busy" in results or count(clients, deployment.pk) == 3
    converge(deployment)
    assert count(clients, deployment.pk) == 3


def _start_worker(log):
    env = dict(os.environ)
    params = connection.get_connection_params()
    env.update(DATABASE_URL=f"postgres://{params['user']}@{params['host']}:{params['port']}/"
                            f"{params['dbname']}",
               DJANGO_SETTINGS_MODULE="tests.settings", HANGAR_SWEEP_SECONDS="1",
               HANGAR_PROGRESS_DEADLINE_S="30")
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "controlplane", "worker", "--beat",
         "--concurrency=1", "--loglevel=INFO", "--schedule", str(log) + ".beat"],
        cwd=ROOT, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT,
        start_new_session=True)


def test_worker_killed_mid_scale_up_leaves_nothing_a_fresh_worker_cannot_finish(
        deployment, clients, tmp_path):
    import redis

    redis.Redis.from_url(os.environ["REDIS_URL"]).delete("celery")
    Deployment.objects.filter(pk=deployment.pk).update(replicas=1)
    converge(deployment)
    log = tmp_path / "worker.log"
    worker = _start_worker(log)
    try:
        actions.scale_deployment(deployment, replicas=8, actor=SYSTEM)
        deadline = time.monotonic() + 120
        # Kill as soon as the worker has started the scale-up (its write-ahead
        # rows are committed) and long before it could have finished.
        while Instance.objects.filter(deployment=deployment).count() < 2:
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.01)
        os.killpg(worker.pid, signal.SIGKILL)  # kill -9, mid-way
        worker.wait()
        ready = Instance.objects.filter(deployment=deployment, health="Healthy").count()
        assert ready < 8, "the worker finished before it was killed"
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
    fresh = _start_worker(log)
    try:
        deadline = time.monotonic() + 180
        while True:
            deployment.refresh_from_db()
            rows = Instance.objects.filter(deployment=deployment)
            if deployment.health == "Healthy" and rows.count() == 8 and \
                    count(clients, deployment.pk) == 8:
                break
            assert time.monotonic() < deadline, (deployment.health_reason,
                                                 log.read_text()[-3000:])
            time.sleep(0.5)
    finally:
        os.killpg(fresh.pid, signal.SIGTERM)
        fresh.wait(timeout=60)
    names = [c.labels["hangar.instance"] for cs in containers(clients, deployment.pk).values()
             for c in cs]
    assert len(names) == len(set(names)) == 8
    assert set(names) == set(rows.values_list("name", flat=True))

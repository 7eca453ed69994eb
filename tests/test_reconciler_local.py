"""The reconciler with the local driver: real processes of the reference agent."""
from __future__ import annotations

import os
import signal
import time

import pytest
import requests

from deployments import actions
from deployments.audit import SYSTEM
from deployments.models import Deployment, DeploymentEvent, Instance
from deployments.reconciler import reconcile_deployment
from deployments.runtimes import get_driver

from .factories import AgentFactory, TargetFactory, VersionFactory

pytestmark = pytest.mark.django_db(transaction=True)


def converge(deployment, health="Healthy", timeout=40, until=None, **expect):
    deadline = time.monotonic() + timeout
    while True:
        reconcile_deployment(deployment.pk)
        deployment.refresh_from_db()
        rows = list(Instance.objects.filter(deployment=deployment))
        if deployment.health == health and all(
                getattr(deployment, k) == v for k, v in expect.items()) and (
                until is None or until(rows)):
            return rows
        if time.monotonic() > deadline:
            raise AssertionError(f"{deployment.health}: {deployment.health_reason}; "
                                 f"{[(r.name, r.phase, r.health, r.health_reason) for r in rows]}")
        time.sleep(0.3)


@pytest.fixture
def local_deployment(tmp_path, settings):
    settings.HANGAR_RESTART_POLICY = {"attempts": 2, "interval_s": 60, "delay_s": 0,
                                      "max_delay_s": 1}
    settings.HANGAR_PROGRESS_DEADLINE_S = 8
    agent = AgentFactory(slug="ref")
    version = VersionFactory(agent=agent, image="", command=["python",
                                                             "agents/reference/agent.py"],
                             port=8080, env={"AGENT_MODE": "realtime"})
    target = TargetFactory(team=agent.team, kind="local",
                           connection={"workdir": str(tmp_path / "runtime")})
    deployment = Deployment.objects.create(agent=agent, version=version, target=target,
                                           replicas=2)
    yield deployment
    Deployment.objects.filter(pk=deployment.pk).update(state="stopped")
    for _ in range(3):
        reconcile_deployment(deployment.pk)
    driver = get_driver(target)
    for item in driver.list_instances(deployment.pk):
        driver.remove_instance(deployment.pk, item.name)


def test_local_replicas_converge_scale_heal_and_readopt(local_deployment):
    d = local_deployment
    rows = converge(d)
    assert len(rows) == 2 and d.observed_generation == d.generation
    assert d.health_reason == "2 of 2 replicas healthy"
    ports = {r.port for r in rows}
    assert len(ports) == 2
    for row in rows:
        answer = requests.post(f"http://{row.address}/invoke", json={"input": "hi"}, timeout=5)
        assert answer.status_code == 200 and answer.json()["instance"] == row.name

    # Scale down: one process goes away.
    actions.scale_deployment(d, replicas=1, actor=SYSTEM)
    rows = converge(d, observed_generation=d.generation + 1)
    assert len(rows) == 1
    driver = get_driver(d.target)
    assert [i.name for i in driver.list_instances(d.pk)] == [rows[0].name]

    # Killed out of band: restarted, and the timeline says why.
    pid = int(rows[0].runtime_id.split(":")[1])
    os.killpg(pid, signal.SIGKILL)
    time.sleep(0.5)
    rows = converge(d)
    assert rows[0].restarts == 1
    reasons = list(DeploymentEvent.objects.filter(deployment=d).values_list("reason", "message"))
    assert any(r == "Exited" and "exited with code" in m for r, m in reasons), reasons
    assert any(r == "Restarted" for r, _ in reasons)

    # The control plane forgets everything: the next pass re-adopts by labels.
    name = rows[0].name
    Instance.objects.filter(deployment=d).delete()
    rows = converge(d)
    assert [r.name for r in rows] == [name]
    assert DeploymentEvent.objects.filter(deployment=d, reason="Adopted").exists()
    assert len(driver.list_instances(d.pk)) == 1


def test_only_passes_that_change_instances_tell_the_pages(local_deployment):
    """The sweep re-runs every deployment every few seconds: a pass that changes
    nothing a table shows sends no ``instances`` event (open fleet pages would
    re-fetch for nothing); a pass that does change something sends one."""
    from unittest import mock

    d = local_deployment
    converge(d)
    reconcile_deployment(d.pk)  # settle anything left from the converging pass
    with mock.patch("deployments.events.publish") as publish:
        reconcile_deployment(d.pk)
    assert not [c for c in publish.call_args_list if c.args[1] == "instances"]

    rows = list(Instance.objects.filter(deployment=d))
    os.killpg(int(rows[0].runtime_id.split(":")[1]), signal.SIGKILL)
    time.sleep(0.5)
    with mock.patch("deployments.events.publish") as publish:
        reconcile_deployment(d.pk)
    assert [c for c in publish.call_args_list if c.args[1] == "instances"]


def test_crash_at_start_ends_degraded_with_bounded_restarts(local_deployment):
    d = local_deployment
    version = VersionFactory(agent=d.agent, command=["python", "agents/reference/agent.py"],
                             port=8080, env={"AGENT_CRASH_AT_START": "1", "AGENT_EXIT_CODE": "3"})
    Deployment.objects.filter(pk=d.pk).update(version=version, replicas=1)
    rows = converge(d, health="Degraded", timeout=60,
                    until=lambda rows: rows and rows[0].phase == "failed")
    time.sleep(1)
    rows = converge(d, health="Degraded")  # and it stays failed: no more restarts
    assert rows[0].phase == "failed"
    assert "exited with code 3" in d.health_reason and "giving up" in d.health_reason
    assert rows[0].restarts == 2  # the budget, then no more


def test_never_ready_ends_degraded(local_deployment):
    d = local_deployment
    version = VersionFactory(agent=d.agent, command=["python", "agents/reference/agent.py"],
                             port=8080, env={"AGENT_FAIL_READINESS": "1"})
    Deployment.objects.filter(pk=d.pk).update(version=version, replicas=1)
    rows = converge(d, health="Degraded", timeout=60)
    assert "failed readiness: 503" in d.health_reason
    assert rows[0].restarts == 0


def test_logs_tail_and_follow_through_the_api_and_page(local_deployment):
    from django.test import Client

    from .factories import MembershipFactory, UserFactory

    d = local_deployment
    Deployment.objects.filter(pk=d.pk).update(replicas=1)
    rows = converge(d)
    requests.post(f"http://{rows[0].address}/invoke", json={"input": "log me"}, timeout=5)
    viewer = UserFactory(username="logviewer")
    MembershipFactory(team=d.agent.team, user=viewer, role="viewer")
    client = Client()
    client.force_login(viewer)
    url = f"/api/v1/deployments/{d.pk}/instances/{rows[0].name}/logs"
    tail = client.get(url + "?tail=50")
    assert tail.status_code == 200 and "ready" in tail.content.decode()
    assert client.get(url + "?tail=-1").status_code == 422
    assert client.get(f"/api/v1/deployments/{d.pk}/instances/nope/logs").status_code == 404
    follow = client.get(url + "?follow=true&tail=3")
    assert follow["Content-Type"] == "text/event-stream"
    chunks = iter(follow.streaming_content)
    received = [next(chunks).decode() for _ in range(3)]
    assert any(chunk.startswith("data: ") for chunk in received)
    follow.close()
    page = client.get(f"/deployments/{d.pk}/instances/{rows[0].name}/logs/",
                      headers={"HX-Request": "true"})
    assert 'id="logs"' in page.content.decode() and "ready" in page.content.decode()
    outsider = UserFactory(username="logoutsider")
    other = Client()
    other.force_login(outsider)
    assert other.get(url).status_code == 404


def test_autoscaler_follows_in_flight_requests_with_a_stabilization_window(
        local_deployment, settings):
    import threading

    from deployments.models import AuditEvent

    settings.HANGAR_AUTOSCALE_DOWN_WINDOW_S = 12
    d = local_deployment
    version = VersionFactory(agent=d.agent, command=["python", "agents/reference/agent.py"],
                             port=8080, env={"AGENT_TOKEN_DELAY_MS": "300"})
    Deployment.objects.filter(pk=d.pk).update(
        version=version, replicas=1, autoscale_min=1, autoscale_max=3,
        autoscale_signal="inflight", autoscale_target=1)
    rows = converge(d)
    address = rows[0].address
    words = " ".join(f"w{i}" for i in range(20))

    def slow_request():
        requests.post(f"http://{address}/invoke/stream", json={"input": words}, timeout=60)

    load = [threading.Thread(target=slow_request) for _ in range(4)]
    for thread in load:
        thread.start()
    time.sleep(0.5)
    converge(d, until=lambda rows: len(rows) == 3, timeout=30)
    assert d.replicas == 3  # ceil(1 × 4 in flight / target 1) = 4, capped at max 3
    event = AuditEvent.objects.filter(action="deployment.scale", object_id=str(d.pk)).latest("id")
    assert event.actor_label == "autoscaler" and event.after["replicas"] == 3
    assert DeploymentEvent.objects.filter(deployment=d, reason="Autoscaled").exists()
    for thread in load:
        thread.join()
    # Idle again: scales down to the minimum, but only after the window.
    reconcile_deployment(d.pk)
    d.refresh_from_db()
    assert d.replicas == 3
    rows = converge(d, until=lambda rows: len(rows) == 1, timeout=40)
    assert d.replicas == 1


def test_deleted_deployments_leave_no_processes(local_deployment):
    from deployments.reconciler import collect_orphans, teardown

    d = local_deployment
    converge(d)
    driver = get_driver(d.target)
    pids = [int(i.runtime_id.split(":")[1]) for i in driver.list_instances(d.pk)]
    assert len(pids) == 2
    # A crash between deleting the row and tearing down: the sweep collects orphans.
    Deployment.objects.filter(pk=d.pk).delete()
    assert collect_orphans() == {d.target.name: 2}
    assert driver.list_instances(d.pk) == []
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or \
            open(f"/proc/{pid}/stat").read().split(")")[1].split()[0] == "Z"
    assert teardown(d.pk, [d.target.pk]) == 0  # idempotent


def test_one_pass_launches_replicas_and_sees_them_ready(local_deployment):
    """The pass that starts instances watches them until they answer their
    readiness probe, so the deployment reads Healthy after that one pass."""
    d = local_deployment
    assert reconcile_deployment(d.pk) == "Healthy"
    d.refresh_from_db()
    rows = list(Instance.objects.filter(deployment=d))
    assert [r.health for r in rows] == ["Healthy", "Healthy"]
    assert all(r.ready_at and r.phase == "running" for r in rows)
    assert d.health_reason == "2 of 2 replicas healthy"
    assert d.observed_generation == d.generation
    ready = DeploymentEvent.objects.filter(deployment=d, reason="Ready").count()
    assert ready == 2
    # The pass wrote its roll-up as it went, one Health event per transition.
    moves = [m.split(":")[0] for m in DeploymentEvent.objects.filter(
        deployment=d, reason="Health").order_by("pk").values_list("message", flat=True)]
    assert len(moves) == len(set(moves)) and moves[-1].endswith("→ Healthy")


def test_a_change_ends_the_watch_and_asks_for_a_pass_at_once(local_deployment, settings):
    """While a pass watches instances that never get ready, a new spec is not
    kept waiting: the pass ends, and asks for the next one right away."""
    import threading

    from deployments.reconciler import reconcile as reconcile_once

    settings.HANGAR_SETTLE_SECONDS = 600
    d = local_deployment
    never_ready = VersionFactory(agent=d.agent, image="", port=8080, command=[
        "python", "-c", "import time; time.sleep(120)"])
    Deployment.objects.filter(pk=d.pk).update(version=never_ready, replicas=1)
    outcome = {}

    def one_pass():
        from django.db import connection
        try:
            outcome["pass"] = reconcile_once(d.pk)
        finally:
            connection.close()

    worker = threading.Thread(target=one_pass)
    worker.start()
    deadline = time.monotonic() + 30
    while not Instance.objects.filter(deployment=d, phase="starting").exists():
        assert time.monotonic() < deadline, "the pass started no instance"
        time.sleep(0.1)
    d.refresh_from_db()
    actions.scale_deployment(d, replicas=0, actor=SYSTEM)
    worker.join(timeout=60)
    assert not worker.is_alive(), "the pass kept watching after the deployment changed"
    assert outcome["pass"].requeue_in is not None and outcome["pass"].requeue_in <= 0.05
    assert reconcile_deployment(d.pk) in ("Healthy", "Progressing")
    assert not Instance.objects.filter(deployment=d).exists()


def test_a_clock_adjustment_does_not_make_running_agents_look_dead(tmp_path, monkeypatch):
    """The kernel's boot time is the wall clock minus the uptime, so it moves
    when NTP or a VM's clock sync adjusts the clock (CI's VM did: agents were
    restarted beside themselves, a job failed as killed, `scripts/run stop`
    stopped nothing). Here the clock is moved by what psutil reads."""
    import json
    import sys

    import psutil

    from deployments.runtimes.base import InstanceSpec

    target = TargetFactory(kind="local", connection={"workdir": str(tmp_path / "runtime")})
    driver = get_driver(target)
    agent = InstanceSpec(deployment_id=7, name="ref-a", generation=1, team="acme", agent="ref",
                         pattern="realtime", command=(sys.executable, "-c",
                                                      "import time; time.sleep(60)"))
    job = InstanceSpec(deployment_id=7, name="job-1", generation=1, team="acme", agent="ref",
                       pattern="batch", command=("sh", "-c", "sleep 1; exit 0"))
    started = driver.ensure_instance(agent)
    driver.start_job(job)
    pid = int(started.runtime_id.split(":")[1])
    real_boot_time = psutil._pslinux.boot_time
    monkeypatch.setattr(psutil._pslinux, "boot_time", lambda: real_boot_time() + 3.0)
    try:
        [observed] = driver.list_instances(7)
        assert (observed.phase, observed.runtime_id) == ("running", started.runtime_id)
        assert driver.ensure_instance(agent).runtime_id == started.runtime_id  # not restarted
        assert driver.list_jobs(7)["job-1"].phase == "running"
        deadline = time.monotonic() + 30
        while (state := driver.list_jobs(7)["job-1"]).phase == "running":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert state.exit_code == 0  # its own exit code, not "killed"
        driver.remove_instance(7, "ref-a")  # stops it: it is seen as alive
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"

        # A state file an earlier Hangar wrote (psutil's epoch time) still matches.
        old = driver.ensure_instance(agent)
        state_file = next((tmp_path / "runtime").glob("deployment-7/*ref-a*/state.json"))
        state = json.loads(state_file.read_text())
        state["proc_start"] = repr(psutil.Process(state["pid"]).create_time())
        state_file.write_text(json.dumps(state))
        assert driver.ensure_instance(agent).runtime_id == old.runtime_id
    finally:
        for item in driver.list_instances(7):
            driver.remove_instance(7, item.name)
        driver.remove_job(7, "job-1")

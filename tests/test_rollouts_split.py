"""A canary without the gateway in front splits by replica proportion (#15):
a stream deployment of four consumers (the reference agent as real local
processes, on this run's Redis) under a canary runs 3 + 1 at 25 %, 2 + 2 at
50 %, and both revisions' consumers take messages from the one consumer
group; an abort puts all four back on stable. Read as a user reads it: the
instances API per revision, the rollout in the API, and the output stream."""
from __future__ import annotations

import json
import time
from collections import Counter

import pytest
from django.utils import timezone

from deployments import actions as registry
from deployments.audit import SYSTEM
from deployments.models import Deployment
from deployments.reconciler import reconcile_deployment
from deployments.runtimes import get_driver
from rollouts import engine

from .factories import AgentFactory, TargetFactory, VersionFactory
from .stream_brokers import RedisKeys

pytestmark = pytest.mark.django_db(transaction=True)

STEPS = [{"set_weight": 25}, {"pause": {}}, {"set_weight": 50}, {"pause": {}},
         {"set_weight": 100}]


@pytest.fixture
def consumers(world, tmp_path, settings):
    settings.HANGAR_PROGRESS_DEADLINE_S = 30
    keys = RedisKeys()
    agent = AgentFactory(team=world.team, slug="consumers", pattern="stream")
    target = TargetFactory(team=world.team, kind="local", name="here",
                           connection={"workdir": str(tmp_path / "runtime")})

    def version(number: int):
        # The agent serves /healthz on $PORT in every mode: a port per replica.
        return VersionFactory(agent=agent, number=number, image="", port=8080,
                              command=["python", "agents/reference/agent.py"],
                              env={"AGENT_MODE": "stream", "AGENT_VARIANT": f"v{number}",
                                   "STREAM_BATCH": "1", "AGENT_LATENCY_MS": "20"},
                              pattern_settings=keys.settings())

    d = registry.create_deployment(agent, version=version(1), target=target, replicas=4,
                                   actor=SYSTEM)
    yield d, version, keys
    Deployment.objects.filter(pk=d.pk).update(state="stopped")
    for _ in range(3):
        reconcile_deployment(d.pk)
    driver = get_driver(target)
    for item in driver.list_instances(d.pk):
        driver.remove_instance(d.pk, item.name)
    keys.cleanup()


def api(client, method, path, body=None):
    kwargs = {"data": json.dumps(body), "content_type": "application/json"} \
        if body is not None else {}
    answer = getattr(client, method)(f"/api/v1{path}", **kwargs)
    assert answer.status_code == 200, answer.content
    return answer.json()


def by_revision(client, d) -> Counter:
    items = api(client, "get", f"/deployments/{d.pk}/instances?limit=100")["items"]
    return Counter(i["revision"] for i in items if i["health"] == "Healthy")


def work(d, client, until, what: str, timeout: float = 90):
    """What the worker does (passes and rollout ticks) until ``until()``."""
    deadline = time.monotonic() + timeout
    while True:
        reconcile_deployment(d.pk)
        engine.advance(d.pk)
        value = until()
        if value:
            return value
        if time.monotonic() > deadline:
            rollout = api(client, "get", f"/deployments/{d.pk}/rollout")["rollout"]
            items = api(client, "get", f"/deployments/{d.pk}/instances?limit=100")["items"]
            seen = [(i["name"], i["revision"], i["health"], i["health_reason"]) for i in items]
            raise AssertionError(f"timed out waiting for {what}: {seen}, {rollout}")
        time.sleep(0.3)


def test_a_stream_canary_splits_its_consumers_by_the_weight(consumers, world):
    d, version, keys = consumers
    operator, viewer = world.client("operator"), world.client("viewer")
    work(d, viewer, lambda: by_revision(viewer, d) == {1: 4}, "four consumers")
    api(operator, "put", f"/deployments/{d.pk}/rollout/strategy",
        {"strategy": "canary", "steps": STEPS})
    registry.update_deployment(d, version=version(2), actor=SYSTEM)
    base = f"/deployments/{d.pk}/rollout"

    def paused_at(weight, split):
        def check():
            rollout = api(viewer, "get", base)["rollout"]
            return rollout["phase"] == "Paused" and rollout["weight"] == weight \
                and by_revision(viewer, d) == split
        return check

    work(d, viewer, paused_at(25, {1: 3, 2: 1}), "3 + 1 at 25 %")

    # Both revisions consume from the one group: every message once.
    for i in range(60):
        keys.client.xadd(keys.source, {"input": f"message {i}"})

    def outputs():
        entries = keys.client.xrange(keys.output)
        return len(entries) >= 60 and entries
    entries = work(d, viewer, outputs, "the 60 outputs")
    assert len({e["source_id"] for _, e in entries}) == 60
    names = {i["name"]: i["revision"] for i in
             api(viewer, "get", f"/deployments/{d.pk}/instances?limit=100")["items"]}
    served = Counter(names.get(e["instance"]) for _, e in entries)
    assert served[1] and served[2], served

    api(operator, "post", f"{base}/promote", {})
    work(d, viewer, paused_at(50, {1: 2, 2: 2}), "2 + 2 at 50 %")

    aborted = api(operator, "post", f"{base}/abort")
    assert aborted["rollout"]["phase"] == "Degraded"
    work(d, viewer, lambda: by_revision(viewer, d) == {1: 4}, "all four back on stable")
    deployment = api(viewer, "get", f"/deployments/{d.pk}")
    assert deployment["health"] == "Degraded"
    assert deployment["health_reason"].startswith("rollout aborted")


def test_a_batch_canary_gives_the_new_revision_its_share_of_the_job_runs(world, tmp_path):
    """Batch runs no replicas: its job runs split (real local job processes).
    The new revision's jobs exit 3 here, so its share is what fails."""
    from deployments.audit import Actor
    from deployments.batch import supervisor
    from deployments.models import JobRun, JobStatus

    agent = AgentFactory(team=world.team, slug="nightly", pattern="batch")
    target = TargetFactory(team=world.team, kind="local", name="jobs",
                           connection={"workdir": str(tmp_path / "runtime")})

    def version(number: int, **env):
        return VersionFactory(agent=agent, number=number, image="", port=None,
                              command=["python", "agents/reference/agent.py"],
                              env={"AGENT_MODE": "batch", **env})

    d = registry.create_deployment(agent, version=version(1), target=target, actor=SYSTEM)
    schedule = registry.create_schedule(d, {"name": "job", "cron": "0 3 * * *"},
                                        Actor(user=None), now=timezone.now())

    def fire(count: int) -> list[JobRun]:
        """``count`` runs by hand ("Run now"), one after the other."""
        fired = []
        for _ in range(count):
            run = registry.trigger_schedule(schedule, Actor(user=None))
            deadline = time.monotonic() + 60
            while not JobRun.objects.get(pk=run.pk).finished_at:
                assert time.monotonic() < deadline, JobRun.objects.get(pk=run.pk).reason
                supervisor.supervise()
                time.sleep(0.1)
            fired.append(JobRun.objects.select_related("revision").get(pk=run.pk))
        return fired

    assert {r.status for r in fire(1)} == {JobStatus.SUCCEEDED}
    operator = world.client("operator")
    api(operator, "put", f"/deployments/{d.pk}/rollout/strategy",
        {"strategy": "canary", "steps": [{"set_weight": 25}, {"pause": {}}]})
    registry.update_deployment(d, version=version(2, AGENT_EXIT_CODE="3"), actor=SYSTEM)
    reconcile_deployment(d.pk)
    engine.advance(d.pk)
    rollout = api(operator, "get", f"/deployments/{d.pk}/rollout")["rollout"]
    assert (rollout["weight"], rollout["phase"]) == (25, "Paused")

    ran = fire(12)
    by = Counter((r.revision.number, r.status) for r in ran)
    assert set(by) == {(1, JobStatus.SUCCEEDED), (2, JobStatus.FAILED)}, (by, [
        (r.revision.number, r.status, r.exit_code, r.reason, r.logs_tail[-800:])
        for r in ran if (r.revision.number == 1) != (r.status == JobStatus.SUCCEEDED)])
    assert 2 <= by[(2, JobStatus.FAILED)] <= 4, by  # about a quarter of the runs

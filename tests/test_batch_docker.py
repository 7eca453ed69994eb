"""Batch on a real dockerd: each firing is a one-off container of the
reference agent in batch mode, supervised level-triggered."""
from __future__ import annotations

import time
from datetime import timedelta

import docker
import pytest

from deployments import actions
from deployments.audit import Actor
from deployments.batch import scheduler, supervisor
from deployments.models import JobRun, JobStatus

from .docker_support import IMAGE, start_hosts
from .factories import AgentFactory, TargetFactory, VersionFactory

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="module")
def docker_url():
    return start_hosts(1)[0]


@pytest.fixture
def batch(docker_url):
    agent = AgentFactory(slug="digest", pattern="batch")
    version = VersionFactory(agent=agent, number=1, image=IMAGE, port=None,
                             env={"AGENT_MODE": "batch"})
    target = TargetFactory(team=agent.team, kind="docker", name="docker-a",
                           connection={"url": docker_url})
    deployment = actions.create_deployment(agent, version=version, target=target,
                                           actor=Actor(user=None))
    client = docker.DockerClient(base_url=docker_url)
    yield deployment, client
    for container in client.containers.list(
            all=True, filters={"label": f"hangar.deployment={deployment.pk}"}):
        container.remove(force=True)
    client.close()


def jobs(client, deployment) -> list:
    return client.containers.list(all=True, filters={
        "label": [f"hangar.deployment={deployment.pk}", "hangar.job=true"]})


def until(run: JobRun, statuses, timeout: float = 90, **supervise) -> JobRun:
    deadline = time.monotonic() + timeout
    while True:
        supervisor.supervise(**supervise)
        run.refresh_from_db()
        if run.status in statuses:
            return run
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run.pk} still {run.status}: {run.reason}")
        time.sleep(0.2)


def test_a_scheduled_firing_runs_a_one_off_container_and_records_its_output(batch):
    deployment, client = batch
    schedule = actions.create_schedule(deployment, {
        "name": "digest", "cron": "*/5 * * * *", "input": {"items": ["alpha", "beta gamma"]}},
        Actor(user=None))
    (run_id,) = scheduler.tick(now=schedule.next_due_at).runs
    run = until(JobRun.objects.get(pk=run_id), {JobStatus.RUNNING})
    (container,) = jobs(client, deployment)
    assert container.name == f"hangar-{deployment.pk}-job-{run.pk}"
    assert container.attrs["HostConfig"]["RestartPolicy"]["Name"] == "no"
    env = dict(item.split("=", 1) for item in container.attrs["Config"]["Env"])
    assert env["TRACEPARENT"].startswith(f"00-{run.trace_id}-")
    assert not deployment.instances.exists()  # a job container is not an instance

    run = until(run, {JobStatus.SUCCEEDED, JobStatus.FAILED})
    assert (run.status, run.exit_code, run.trigger) == (JobStatus.SUCCEEDED, 0, "schedule")
    assert run.output["items"] == 2 and len(run.output["outputs"]) == 2
    assert run.items == 2 and run.output_tokens > 0 and run.duration_s > 0
    assert jobs(client, deployment) == []


def test_a_timeout_kills_the_container(batch):
    deployment, client = batch
    schedule = actions.create_schedule(deployment, {
        "name": "slow", "cron": "*/5 * * * *", "timeout_s": 30,
        "env": {"AGENT_LATENCY_MS": "120000"}}, Actor(user=None))
    run = until(actions.trigger_schedule(schedule, Actor(user=None)), {JobStatus.RUNNING})
    assert [c.status for c in jobs(client, deployment)] == ["running"]
    run = until(run, {JobStatus.TIMEOUT}, now=run.started_at + timedelta(seconds=31))
    assert run.exit_code == 124 and "timed out after 30s" in run.reason
    assert jobs(client, deployment) == []


def test_replace_stops_the_running_container_and_starts_the_new_one(batch):
    deployment, client = batch
    schedule = actions.create_schedule(deployment, {
        "name": "fresh", "cron": "*/5 * * * *", "concurrency_policy": "replace",
        "env": {"AGENT_LATENCY_MS": "120000"}}, Actor(user=None))
    first = until(actions.trigger_schedule(schedule, Actor(user=None)), {JobStatus.RUNNING})
    second = actions.trigger_schedule(schedule, Actor(user=None))
    second = until(second, {JobStatus.RUNNING})
    first.refresh_from_db()
    assert (first.status, first.reason) == (JobStatus.CANCELLED, f"replaced by run #{second.pk}")
    assert [c.name for c in jobs(client, deployment)] == [
        f"hangar-{deployment.pk}-job-{second.pk}"]

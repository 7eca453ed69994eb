"""Batch on Kubernetes (kmock at the wire level): Hangar's scheduler fires,
each firing is a Job made by the supervisor (no CronJob, no long-running
replicas), job pods are never instances, and the outcome is read back."""
from __future__ import annotations

import base64
import re

import pytest
import pytest_asyncio
from django.db import connections

from deployments import actions
from deployments.audit import Actor
from deployments.batch import supervisor
from deployments.models import Instance, JobRun, JobStatus
from deployments.reconciler import reconcile_deployment

from .factories import AgentFactory, TargetFactory, VersionFactory
from .test_kubernetes import (
    NAMESPACE,
    RESOURCES,
    TOKEN,
    Cluster,
    container_status,
    pod,
    run,
    stored,
)

pytestmark = [pytest.mark.kmock(cls=Cluster), pytest.mark.django_db(transaction=True)]


@pytest_asyncio.fixture
async def cluster(kmock):
    for resource in RESOURCES.values():
        kmock.resources[resource] = {}
    return kmock


def in_thread(function):
    """Database work off the event loop that serves kmock."""
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        finally:
            connections.close_all()
    return wrapper


@in_thread
def make(url: str):
    agent = AgentFactory(slug="reports", pattern="batch")
    version = VersionFactory(agent=agent, number=1, image="hangar/reference-agent:latest",
                             port=None, env={"AGENT_MODE": "batch"},
                             pattern_settings={"schedule": "0 3 * * *", "timeout_s": 600})
    target = TargetFactory(team=agent.team, kind="kubernetes", name="k8s", connection={
        "host": url, "token": TOKEN, "namespace": NAMESPACE})
    deployment = actions.create_deployment(agent, version=version, target=target,
                                           actor=Actor(user=None))
    schedule = deployment.schedules.get()
    trigger = actions.trigger_schedule(schedule, Actor(user=None), input={"input": "q3"})
    return deployment, trigger


@in_thread
def reconcile(deployment_id: int) -> list:
    reconcile_deployment(deployment_id)
    return list(Instance.objects.filter(deployment_id=deployment_id).values_list("name",
                                                                                flat=True))


@in_thread
def supervise_and_read(run_id: int) -> JobRun:
    supervisor.supervise()
    return JobRun.objects.get(pk=run_id)


@pytest.mark.asyncio
async def test_a_batch_deployment_runs_each_firing_as_a_job(cluster):
    cluster["get", re.compile(r".*/pods/[^/]+/log")] << (
        b"2026 reports[x] processing\n"
        b'{"output": "done", "items": 1, "usage": {"input_tokens": 4, "output_tokens": 9}}\n')
    deployment, job_run = await run(make, str(cluster.url))

    assert await run(reconcile, deployment.pk) == []
    name = f"reports-production-{deployment.pk}"
    assert stored(cluster, "Deployment", name)["spec"]["replicas"] == 0  # no replicas
    assert not [r for r in cluster if "cronjobs" in r.url.path  # and never a CronJob
                and r.method.value in ("POST", "PATCH", "PUT")]

    started = await run(supervise_and_read, job_run.pk)
    assert started.status == JobStatus.RUNNING and started.unit_name == f"job-{job_run.pk}"
    job_name = f"hangar-{deployment.pk}-job-{job_run.pk}"
    job = stored(cluster, "Job", job_name)
    assert job["metadata"]["labels"]["hangar.job"] == "true"
    assert job["spec"]["backoffLimit"] == 0  # Hangar retries, not the Job
    assert job["spec"]["activeDeadlineSeconds"] >= 600  # a safety net past Hangar's timeout
    secret = stored(cluster, "Secret", f"{job_name}-env")["data"]
    traceparent = base64.b64decode(secret["TRACEPARENT"]).decode()
    assert traceparent.startswith(f"00-{job_run.trace_id}-")
    assert base64.b64decode(secret["AGENT_INPUT"]).decode() == '{"input": "q3"}'
    assert "TRACEPARENT" not in str(job["spec"])

    # The Job controller starts its pod: a job pod is never an instance.
    job_pod = pod(f"{job_name}-abcde", deployment_id=deployment.pk, phase="Running",
                  containers=[container_status({"running": {}}, started=True)])
    job_pod["metadata"]["labels"].update({"job-name": job_name, "hangar.job": "true"})
    cluster.objects[RESOURCES["Pod"], NAMESPACE, job_pod["metadata"]["name"]] = job_pod
    cluster.objects[RESOURCES["Job"], NAMESPACE, job_name]["status"] = {
        "startTime": "2026-01-02T03:00:00Z", "active": 1}
    assert await run(reconcile, deployment.pk) == []
    assert (await run(supervise_and_read, job_run.pk)).status == JobStatus.RUNNING

    # It completes: the next pass records the outcome and deletes the Job and its Secret.
    job_pod["status"]["phase"] = "Succeeded"
    job_pod["status"]["containerStatuses"] = [container_status({"terminated": {
        "reason": "Completed", "exitCode": 0, "finishedAt": "2026-01-02T03:00:08Z"}})]
    cluster.objects[RESOURCES["Pod"], NAMESPACE, job_pod["metadata"]["name"]] = job_pod
    cluster.objects[RESOURCES["Job"], NAMESPACE, job_name]["status"] = {
        "startTime": "2026-01-02T03:00:00Z", "completionTime": "2026-01-02T03:00:09Z",
        "conditions": [{"type": "Complete", "status": "True",
                        "lastTransitionTime": "2026-01-02T03:00:09Z"}]}
    done = await run(supervise_and_read, job_run.pk)
    assert (done.status, done.exit_code, done.duration_s) == (JobStatus.SUCCEEDED, 0, 9.0)
    assert done.output == {"output": "done", "items": 1,
                           "usage": {"input_tokens": 4, "output_tokens": 9}}
    assert (done.items, done.input_tokens, done.output_tokens) == (1, 4, 9)
    assert "processing" in done.logs_tail
    assert stored(cluster, "Job", job_name).deleted
    assert stored(cluster, "Secret", f"{job_name}-env").deleted


@pytest.mark.asyncio
async def test_a_failed_job_reports_its_exit_code(cluster):
    cluster["get", re.compile(r".*/pods/[^/]+/log")] << b"Traceback: boom\n"
    deployment, job_run = await run(make, str(cluster.url))
    await run(supervise_and_read, job_run.pk)
    job_name = f"hangar-{deployment.pk}-job-{job_run.pk}"
    failed_pod = pod(f"{job_name}-x", deployment_id=deployment.pk, phase="Failed",
                     containers=[container_status({"terminated": {
                         "reason": "Error", "exitCode": 3,
                         "finishedAt": "2026-01-02T03:00:05Z"}})])
    failed_pod["metadata"]["labels"].update({"job-name": job_name, "hangar.job": "true"})
    cluster.objects[RESOURCES["Pod"], NAMESPACE, failed_pod["metadata"]["name"]] = failed_pod
    cluster.objects[RESOURCES["Job"], NAMESPACE, job_name]["status"] = {
        "startTime": "2026-01-02T03:00:00Z",
        "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                        "lastTransitionTime": "2026-01-02T03:00:06Z"}]}
    done = await run(supervise_and_read, job_run.pk)
    assert (done.status, done.exit_code) == (JobStatus.FAILED, 3)
    assert done.reason.startswith("exit code 3") and done.output is None
    assert stored(cluster, "Job", job_name).deleted

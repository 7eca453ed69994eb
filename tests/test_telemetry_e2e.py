"""End to end: the reference agent runs in Docker, is invoked over HTTP, and its
spans reach Hangar through the real OpenTelemetry exporter and the real web
server (uvicorn, the ASGI fast path) on real PostgreSQL; the run appears with
the agent's token counts and the cost genai-prices gives for its model."""
from __future__ import annotations

import os
import time
from pathlib import Path
from unittest import mock

import docker
import pytest
import requests
from django.db import connection
from genai_prices import Usage, calc_price

from deployments import actions
from deployments.audit import SYSTEM
from deployments.models import Deployment
from deployments.reconciler import reconcile_deployment
from telemetry.models import Run, Span

from .docker_support import IMAGE, start_hosts
from .factories import AgentFactory, TargetFactory, VersionFactory
from .processes import free_port, start_web, stop, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

MODEL = "gpt-4o-mini"


@pytest.fixture(scope="session")
def docker_url():
    return start_hosts(2)[0]


@pytest.fixture
def web(settings, tmp_path: Path):
    """uvicorn serving this test database on 127.0.0.1 (the container's host network)."""
    db = connection.settings_dict
    url = (f"postgres://{db['USER']}{':' + db['PASSWORD'] if db['PASSWORD'] else ''}"
           f"@{db['HOST']}:{db['PORT']}/{db['NAME']}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_SETTINGS")}
    env.update(DATABASE_URL=url, DJANGO_SETTINGS_MODULE="controlplane.settings",
               HANGAR_LOG_LEVEL="WARNING")
    port = free_port()
    log = tmp_path / "web.log"
    process = start_web(port, env, log)
    wait_for(f"http://127.0.0.1:{port}/healthz", process, log)
    settings.HANGAR_OTLP_ENDPOINT = f"http://127.0.0.1:{port}"
    yield port, log
    stop(process)


@pytest.fixture
def deployment(docker_url, web):
    agent = AgentFactory(slug="traced")
    version = VersionFactory(agent=agent, image=IMAGE, port=8080, cpu="0.2", memory_mb=128,
                             env={"AGENT_MODE": "realtime", "AGENT_MODEL": MODEL,
                                  "OTEL_BSP_SCHEDULE_DELAY": "200"})
    target = TargetFactory(team=agent.team, name="docker-0", kind="docker",
                           connection={"url": docker_url})
    with mock.patch("deployments.tasks.reconcile.delay"):  # this test reconciles itself
        made = actions.create_deployment(agent, version=version, target=target, replicas=1,
                                         actor=SYSTEM)
    yield Deployment.objects.get(pk=made.pk)
    Deployment.objects.filter(pk=made.pk).update(state="stopped")
    for _ in range(3):
        reconcile_deployment(made.pk)
    client = docker.DockerClient(base_url=docker_url)
    for container in client.containers.list(
            all=True, filters={"label": f"hangar.deployment={made.pk}"}):
        container.remove(force=True)
    client.close()


def converge(deployment, timeout=120):
    deadline = time.monotonic() + timeout
    while True:
        reconcile_deployment(deployment.pk)
        deployment.refresh_from_db()
        instance = deployment.instances.filter(health="Healthy").first()
        if instance is not None:
            return instance
        if time.monotonic() > deadline:
            raise AssertionError(f"{deployment.health}: {deployment.health_reason}")
        time.sleep(0.5)


def test_reference_agent_spans_become_a_priced_run(deployment, web):
    port, log = web
    instance = converge(deployment)
    env = dict(deployment.instances.get().version.env)
    assert env["AGENT_MODEL"] == MODEL
    answer = requests.post(f"http://{instance.address}/invoke",
                           json={"input": "How much does this cost, exactly?"}, timeout=30)
    assert answer.status_code == 200, answer.text
    usage = answer.json()["usage"]
    assert answer.json()["model"] == MODEL

    deadline = time.monotonic() + 90
    run = None
    while time.monotonic() < deadline:
        run = Run.objects.filter(deployment_id=deployment.pk, root_span_id__isnull=False).first()
        if run is not None and run.llm_spans:
            break
        time.sleep(0.5)
    assert run is not None, "no run arrived:\n" + log.read_text()[-3000:]
    assert (run.input_tokens, run.output_tokens) == (usage["input_tokens"],
                                                    usage["output_tokens"])
    assert run.status == "ok" and run.name == "invoke_agent" and run.model == MODEL
    assert run.instance == instance.name and run.version_id == deployment.version_id
    assert run.span_count == 2 and run.unpriced_spans == 0
    expected = calc_price(Usage(input_tokens=usage["input_tokens"],
                                output_tokens=usage["output_tokens"]), MODEL,
                          genai_request_timestamp=run.started_at).total_price
    assert run.cost_usd == expected > 0
    chat = Span.objects.get(deployment_id=deployment.pk, parent_span_id=run.root_span_id)
    assert chat.name == f"chat {MODEL}" and chat.cost_usd == expected

    # The API shows the same run and its span tree to the team.
    from deployments.models import Membership
    from tests.factories import UserFactory

    user = UserFactory(username="watcher")
    Membership.objects.create(team=deployment.agent.team, user=user, role="viewer")
    _, token = actions.create_token(deployment.agent.team, name="read", scope="read",
                                    expires_at=None, actor=SYSTEM, user=user)
    trace = requests.get(f"http://127.0.0.1:{port}/api/v1/runs/{run.pk}/trace",
                         headers={"Authorization": f"Bearer {token}"}, timeout=10).json()
    (root,) = trace["spans"]
    assert root["name"] == "invoke_agent"
    assert root["children"][0]["input_tokens"] == usage["input_tokens"]

"""Stream runs (#12 point 6): each message the reference agent consumes is an
``invoke_agent`` span (kind CONSUMER, with the messaging attributes) exported
with the deployment's ingest token to the real web server; telemetry makes it a
run of the deployment with tokens and the cost genai-prices gives, and the
stream panel shows the cost per 1,000 messages. A dead-lettered message is no
run (it never reached the model)."""
from __future__ import annotations

from decimal import Decimal

import pytest
from django.test import Client
from genai_prices import Usage, calc_price

from telemetry.models import Run

from .factories import AgentFactory, DeploymentFactory, VersionFactory
from .processes import database_env, free_port, start_web, stop, wait_for
from .stream_support import Keys, start_consumer, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def keys():
    found = Keys()
    yield found
    found.cleanup()


@pytest.fixture
def web(tmp_path):
    port = free_port()
    log = tmp_path / "web.log"
    process = start_web(port, database_env(), log)
    wait_for(f"http://127.0.0.1:{port}/healthz", process, log)
    yield f"http://127.0.0.1:{port}"
    stop(process)


def test_each_message_is_a_run_of_the_deployment_with_its_cost(world, keys, web, tmp_path):
    agent = AgentFactory(team=world.team, slug="scorer", name="Scorer", pattern="stream")
    version = VersionFactory(agent=agent, number=1, pattern_settings=keys.settings())
    d = DeploymentFactory(agent=agent, version=version, target=world.target)
    d.ingest_token = f"{d.pk}.stream-runs-ingest-token-xxxxxxxxxxxx"
    d.save(update_fields=["ingest_token"])
    consumer = start_consumer(
        keys, tmp_path / "agent.log", HANGAR_INSTANCE="scorer-1", AGENT_MODEL="gpt-4o-mini",
        OTEL_EXPORTER_OTLP_ENDPOINT=web, OTEL_BSP_SCHEDULE_DELAY="200",
        OTEL_EXPORTER_OTLP_HEADERS=f"authorization=Bearer {d.ingest_token}")
    try:
        ids = [keys.client.xadd(keys.source, {"input": f"score order number {i}"})
               for i in range(3)]
        keys.client.xadd(keys.source, {"input": "poison"})
        wait_until(lambda: keys.client.xlen(keys.output) == 3, what="three results")
        wait_until(lambda: keys.client.xlen(keys.deadletter) == 1, what="the dead letter")
        runs = wait_until(lambda: (found := list(Run.objects.filter(
            deployment_id=d.pk, root_span_id__isnull=False))) and len(found) >= 3 and found,
            timeout=30, what="three runs")
    finally:
        consumer.terminate()
        consumer.wait(10)
    assert len(runs) == 3  # the poison message never reached the model: no run
    results = {f["source_id"]: f for _, f in keys.client.xrange(keys.output)}
    assert set(results) == set(ids)
    expected = Decimal(0)
    for run in runs:
        assert run.name == "invoke_agent" and run.status == "ok"
        assert run.instance == "scorer-1" and run.model == "gpt-4o-mini"
        assert run.agent_id == agent.pk and run.team_id == world.team.pk
        assert run.cost_usd > 0 and run.input_tokens == 4
        expected += calc_price(Usage(input_tokens=run.input_tokens,
                                     output_tokens=run.output_tokens),
                               model_ref="gpt-4o-mini").total_price
    c = Client()
    c.force_login(world.users["viewer"])
    html = c.get(f"/deployments/{d.pk}/").content.decode()
    assert "3 messages in the last hour" in html
    total = sum(r.cost_usd for r in runs)
    assert abs(total - expected) < Decimal("1e-9")
    from telemetry.templatetags.telemetry import usd

    assert f'data-testid="stream-cost">{usd(total * 1000 / 3)}<' in html

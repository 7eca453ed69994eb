"""Stream sources: settings validated per kind (422 naming the field), the
group created when missing, lag read from the real broker (Redis Streams and
NATS JetStream) and stored as samples, an unreachable broker said once."""
from __future__ import annotations

import json

import pytest

from deployments.models import (
    AgentVersion,
    Deployment,
    DeploymentEvent,
    Secret,
    StreamSample,
)
from deployments.patterns import get_pattern
from deployments.streams import SOURCES

from .factories import AgentFactory, TargetFactory, VersionFactory
from .stream_brokers import NatsNames, OwnServer, RedisKeys, redis_url, run

pytestmark = pytest.mark.django_db(transaction=True)
API = "/api/v1"


@pytest.fixture
def redis_keys():
    keys = RedisKeys()
    yield keys
    keys.cleanup()


@pytest.fixture
def nats_names():
    names = NatsNames()
    yield names
    names.cleanup()


def create_version(world, settings):
    agent = AgentFactory(team=world.team, slug="orders", pattern="stream")
    return world.client("operator").post(
        f"{API}/agents/{agent.pk}/versions", content_type="application/json",
        data=json.dumps({"image": "hangar/reference-agent:latest",
                         "pattern_settings": settings}))


REDIS = {"kind": "redis", "url": "redis://127.0.0.1:6379/5", "stream": "orders",
         "group": "triage"}
NATS = {"kind": "nats", "url": "nats://127.0.0.1:4222", "stream": "ORDERS",
        "subjects": ["orders.>"], "durable": "triage"}

BAD_SETTINGS = [
    ({"source": {k: v for k, v in REDIS.items() if k != "stream"}}, "source.redis.stream"),
    ({"source": {**REDIS, "group": ""}}, "source.redis.group"),
    ({"source": {**REDIS, "start_id": "soon"}}, "source.redis.start_id"),
    ({"source": {**REDIS, "url": "redis://10.1.2.3:6379/0"}}, "source.redis.url"),
    ({"source": {**REDIS, "url": "redis://:hunter2@127.0.0.1:6379/0"}}, "source.redis.url"),
    ({"source": {**REDIS, "url_secret": "orders-redis"}}, "source.redis"),
    ({"source": {**NATS, "subjects": []}}, "source.nats.subjects"),
    ({"source": {**NATS, "stream": "has.dots"}}, "source.nats.stream"),
    ({"source": {**NATS, "durable": None}}, "source.nats.durable"),
    ({"source": {**NATS, "url": "http://127.0.0.1:4222"}}, "source.nats.url"),
    ({"source": {"kind": "kafka", "stream": "x"}}, "source"),
    ({"source": REDIS, "lag_target": 0}, "lag_target"),
    ({"source": REDIS, "max_deliveries": 0}, "max_deliveries"),
    ({"source": REDIS, "polling_s": 0}, "polling_s"),
    ({"source": REDIS, "cooldown_s": -1}, "cooldown_s"),
    ({"source": REDIS, "min_replicas": 4, "max_replicas": 2}, "pattern_settings"),
    ({"source": REDIS, "lag_targt": 5}, "lag_targt"),
]


@pytest.mark.parametrize(("settings", "field"), BAD_SETTINGS)
def test_bad_source_settings_are_a_422_naming_the_field(world, settings, field):
    answer = create_version(world, settings)
    assert answer.status_code == 422, answer.content
    messages = answer.json()["detail"]["pattern_settings"]
    assert any(m.startswith(f"{field}:") for m in messages), messages
    assert not AgentVersion.objects.filter(agent__slug="orders").exists()


@pytest.mark.parametrize("source", [REDIS, NATS, {**REDIS, "url": None,
                                                  "url_secret": "orders-redis"}])
def test_good_source_settings_are_stored_as_given(world, source):
    source = {k: v for k, v in source.items() if v is not None}
    settings = {"source": source, "lag_target": 500, "activation_lag": 10,
                "max_replicas": 8, "cooldown_s": 60, "output_stream": "orders-out"}
    answer = create_version(world, settings)
    assert answer.status_code == 201, answer.content
    assert AgentVersion.objects.get(pk=answer.json()["id"]).pattern_settings == settings


def test_sources_are_registered_by_kind():
    assert set(SOURCES) == {"redis", "nats"}


def stream_deployment(world, settings, *, team=None) -> Deployment:
    team = team or world.team
    agent = AgentFactory(team=team, slug="consumers", pattern="stream")
    version = VersionFactory(agent=agent, pattern_settings=settings)
    target = TargetFactory(team=team, kind="local", connection={})
    return Deployment.objects.create(agent=agent, version=version, target=target, replicas=1)


def measure(d: Deployment):
    d = Deployment.objects.select_related("agent", "version").get(pk=d.pk)
    return get_pattern("stream").measure(d, force=True)


def test_redis_group_is_created_and_lag_equals_what_redis_reports(world, redis_keys):
    keys = redis_keys
    d = stream_deployment(world, keys.settings())
    first = measure(d)  # creates the stream and the group
    assert first.error == "" and first.lag == 0 and first.pending == 0
    assert [g["name"] for g in keys.client.xinfo_groups(keys.source)] == ["workers"]
    for i in range(50):
        keys.client.xadd(keys.source, {"input": f"q{i}"})
    taken = keys.client.xreadgroup("workers", "c1", {keys.source: ">"}, count=20)[0][1]
    keys.client.xack(keys.source, "workers", *[i for i, _ in taken[:5]])
    sample = measure(d)
    assert (sample.lag, sample.pending) == keys.broker_lag() == (45, 15)
    assert sample.produced == 50
    # Entries deleted under the group: Redis cannot say its lag; Hangar counts.
    keys.client.xdel(keys.source, *[i for i, _ in taken[:5]])
    sample = measure(d)
    assert (sample.lag, sample.pending) == (45, 15)
    assert StreamSample.objects.filter(deployment=d).count() == 3


def test_redis_url_from_a_team_secret(world, redis_keys):
    Secret.objects.create(team=world.team, name="orders-redis", value=redis_url())
    settings = redis_keys.settings()
    settings["source"] = {**settings["source"], "url": None, "url_secret": "orders-redis"}
    del settings["source"]["url"]
    d = stream_deployment(world, settings)
    assert measure(d).error == ""
    # Another team's secret of the same name is not this deployment's.
    other = stream_deployment(world, settings, team=world.other_team)
    assert "secret 'orders-redis' not found" in measure(other).error


def test_nats_consumer_is_created_and_lag_equals_what_jetstream_reports(world, nats_names):
    names = nats_names
    d = stream_deployment(world, names.settings(ack_wait_s=30))
    first = measure(d)  # creates the stream, the outputs and the durable consumer
    assert first.error == "" and first.lag == 0
    names.publish(30)

    async def take(js):
        sub = await js.pull_subscribe(names.subject, names.durable, stream=names.stream)
        msgs = await sub.fetch(12, timeout=5)
        for msg in msgs[:2]:
            await msg.ack()
    run(names._js(take))
    sample = measure(d)
    assert (sample.lag, sample.pending) == names.broker_lag() == (28, 10)
    assert sample.produced == 30
    assert names.messages(names.output) == [] and names.messages(names.deadletter) == []


@pytest.mark.parametrize("kind", ["redis", "nats"])
def test_an_unreachable_broker_is_a_sample_with_its_words_said_once(world, kind):
    server = OwnServer(kind)
    try:
        source = (REDIS | {"url": server.url} if kind == "redis"
                  else NATS | {"url": server.url})
        d = stream_deployment(world, {"source": source})
        for _ in range(2):
            sample = measure(d)
            assert sample.lag is None and str(server.port) in sample.error
            assert ("connection refused" if kind == "redis" else "connect call failed") \
                in sample.error.lower()
        d.refresh_from_db()
        assert d.autoscale_state["stream"]["error"] == sample.error
        warned = DeploymentEvent.objects.filter(deployment=d, reason="StreamUnreachable")
        assert warned.count() == 1 and str(server.port) in warned.get().message
        server.start()
        sample = measure(d)
        assert sample.error == "" and sample.lag == 0
        assert DeploymentEvent.objects.filter(deployment=d, reason="StreamReachable").count() == 1
        d.refresh_from_db()
        assert d.autoscale_state["stream"]["error"] == ""
    finally:
        server.cleanup()

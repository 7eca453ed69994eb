"""The stream pattern's panels on the deployment page, from real broker state:
the reference agent consumes this run's Redis; the page shows results per
replica, in/out rates and the dead letters; the dead-letter forms act for
operators only and say what is wrong (422) without touching the broker."""
from __future__ import annotations

import pytest
from django.test import Client

from deployments.models import AuditEvent

from .factories import AgentFactory, DeploymentFactory, VersionFactory
from .stream_support import Keys, dead_letter_poison, start_consumer, wait_until

pytestmark = pytest.mark.django_db


@pytest.fixture
def keys():
    found = Keys()
    yield found
    found.cleanup()


@pytest.fixture
def stream(world, keys):
    agent = AgentFactory(team=world.team, slug="orders", name="Orders", pattern="stream")
    version = VersionFactory(agent=agent, number=1, pattern_settings=keys.settings())
    return DeploymentFactory(agent=agent, version=version, target=world.target)


def client(world, who):
    c = Client()
    c.force_login(world.users[who])
    return c


def test_the_page_shows_throughput_per_replica_and_dead_letters(world, stream, keys,
                                                                tmp_path):
    consumers = [start_consumer(keys, tmp_path / f"c{i}.log", HANGAR_INSTANCE=f"orders-{i}")
                 for i in range(2)]
    try:
        for i in range(40):
            keys.client.xadd(keys.source, {"input": f"order {i}"})
        keys.client.xadd(keys.source, {"input": "poison"})
        wait_until(lambda: keys.client.xlen(keys.output) == 40, what="40 results")
        wait_until(lambda: keys.client.xlen(keys.deadletter) == 1, what="a dead letter")
    finally:
        for c in consumers:
            c.terminate()
            c.wait(10)
    per_instance = {}
    for _, fields in keys.client.xrange(keys.output):
        per_instance[fields["instance"]] = per_instance.get(fields["instance"], 0) + 1

    html = client(world, "operator").get(f"/deployments/{stream.pk}/").content.decode()
    assert 'id="panel-stream"' in html and 'id="panel-stream-deadletters"' in html
    assert 'data-testid="stream-in">41<' in html  # 41 messages added in the last minute
    assert 'data-testid="stream-out">40<' in html
    assert 'data-testid="stream-deadletters">1<' in html
    for name, count in per_instance.items():
        assert f'<tr data-instance="{name}"><td class="mono">{name}</td><td>{count}</td>' in html
    (dead,) = keys.client.xrange(keys.deadletter)
    assert f'data-deadletter="{dead[0]}"' in html and "poison message" in html
    assert "Replay ticked" in html and "Purge all 1" in html

    viewer = client(world, "viewer").get(f"/deployments/{stream.pk}/").content.decode()
    assert f'data-deadletter="{dead[0]}"' in viewer
    assert "Replay ticked" not in viewer and 'name="ids"' not in viewer


def post(world, who, deployment, verb, data):
    return client(world, who).post(f"/deployments/{deployment.pk}/dead-letters/{verb}/", data,
                                   headers={"HX-Request": "true",
                                            "HX-Target": "panel-stream-deadletters"})


@pytest.mark.parametrize("verb, data, says", [
    ("replay", {"scope": "selected"}, "Tick at least one dead letter"),
    ("purge", {"scope": "selected"}, "Tick at least one dead letter"),
    ("replay", {"scope": "selected", "ids": ["nonsense"]}, "Not a dead-letter id: nonsense"),
    ("purge", {"scope": "all", "confirm": "wrong"}, "type orders@production to confirm"),
    ("purge", {"scope": "all"}, "type orders@production to confirm"),
    ("replay", {"scope": "everything"}, "Select a valid choice"),
])
def test_form_errors_are_shown_in_the_panel_and_change_nothing(world, stream, keys, tmp_path,
                                                              verb, data, says):
    dead_letter_poison(keys, tmp_path / "agent.log")
    before = AuditEvent.objects.count()
    answer = post(world, "operator", stream, verb, data)
    assert answer.status_code == 422
    html = answer.content.decode()
    assert html.startswith('<section class="card" id="panel-stream-deadletters"')
    assert says in html
    assert keys.client.xlen(keys.deadletter) == 1 and AuditEvent.objects.count() == before


def test_replay_from_the_panel_and_purge_all_with_the_name(world, stream, keys, tmp_path):
    dead_letter_poison(keys, tmp_path / "agent.log", count=2)
    first = keys.client.xrange(keys.deadletter)[0][0]
    assert post(world, "viewer", stream, "replay", {"ids": [first]}).status_code == 403
    answer = post(world, "operator", stream, "replay", {"scope": "selected", "ids": [first]})
    assert answer.status_code == 200
    assert f"Replayed 1 dead letter(s) to {keys.source}." in answer.content.decode()
    assert keys.client.xlen(keys.deadletter) == 1
    answer = post(world, "operator", stream, "purge",
                  {"scope": "all", "confirm": stream.name})
    assert "Purged 1 dead letter(s)." in answer.content.decode()
    assert keys.client.xlen(keys.deadletter) == 0
    assert "No dead letters." in answer.content.decode()
    assert post(world, "outsider", stream, "purge", {"scope": "all"}).status_code == 404


def test_lag_and_pending_over_time_are_what_hangar_read_from_the_broker(world, stream, keys):
    from deployments.patterns import get_pattern
    from deployments.streams import poll

    settings = get_pattern("stream").settings(stream.version)
    for i in range(30):
        keys.client.xadd(keys.source, {"input": f"order {i}"})
    first = poll.measure(stream, settings, force=True)
    keys.client.xreadgroup(keys.group, "someone", {keys.source: ">"}, count=5)
    for i in range(10):
        keys.client.xadd(keys.source, {"input": f"later {i}"})
    second = poll.measure(stream, settings, force=True)
    assert (first.lag, first.pending) == (30, 0) and (second.lag, second.pending) == (40, 5)
    html = client(world, "viewer").get(f"/deployments/{stream.pk}/", headers={
        "HX-Request": "true", "HX-Target": "panel-stream"}).content.decode()
    assert html.lstrip().startswith('<section class="card stream-panel" id="panel-stream"')
    assert 'data-testid="stream-lag">40<' in html and 'data-testid="stream-pending">5<' in html
    assert 'data-testid="stream-chart"' in html and "peak 40" in html

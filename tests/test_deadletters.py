"""Dead letters of a stream deployment through the API: the reference agent
dead-letters real poison messages on this run's Redis; viewers list and inspect
them, operators replay them to the source (once, with the fields they had) or
purge them, each audited; bad selections are 422s naming the field, other
teams get 404, a broker that does not answer a 503 that changes nothing."""
from __future__ import annotations

import json

import pytest

from deployments.models import AuditEvent

from .factories import AgentFactory, DeploymentFactory, VersionFactory
from .stream_support import Keys, dead_letter_poison

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


def api(world, who, method, path, body=None):
    client = world.client(who)
    kwargs = {"data": json.dumps(body), "content_type": "application/json"} \
        if body is not None else {}
    return getattr(client, method)(f"/api/v1{path}", **kwargs)


def test_viewer_lists_and_inspects_what_the_agent_dead_lettered(world, stream, keys, tmp_path):
    poison = dead_letter_poison(keys, tmp_path / "agent.log", count=3)
    base = f"/deployments/{stream.pk}/dead-letters"
    page = api(world, "viewer", "get", f"{base}?limit=2").json()
    assert page["count"] == 3 and len(page["items"]) == 2
    newest = page["items"][0]
    assert newest["source_id"] == poison[2] and newest["input"] == "poison"
    assert newest["fields"] == {"input": "poison", "n": "2"}
    assert newest["deliveries"] == 2 and "poison" in newest["error"]
    assert newest["source_stream"] == keys.source and newest["group"] == keys.group
    older = api(world, "viewer", "get", f"{base}?limit=2&before={page['next']}").json()
    assert [d["source_id"] for d in older["items"]] == [poison[0]]
    assert older["next"] is None
    for before in ("0", "0-0", "99999999999999999999-0"):
        assert api(world, "viewer", "get", f"{base}?before={before}").status_code == 200

    one = api(world, "viewer", "get", f"{base}/{newest['id']}")
    assert one.status_code == 200 and one.json() == newest
    assert api(world, "viewer", "get", f"{base}/1-0").status_code == 404
    assert api(world, "viewer", "get", f"{base}/99999999999999999999-0").status_code == 404
    assert api(world, "outsider", "get", base).status_code == 404
    assert api(world, "outsider", "get", f"{base}/{newest['id']}").status_code == 404


def test_operator_replays_one_to_the_source_once_and_it_is_audited(world, stream, keys,
                                                                  tmp_path):
    poison = dead_letter_poison(keys, tmp_path / "agent.log", count=2)
    base = f"/deployments/{stream.pk}/dead-letters"
    first = api(world, "viewer", "get", base).json()["items"][-1]
    assert first["source_id"] == poison[0]

    assert api(world, "viewer", "post", f"{base}/replay", {"ids": [first["id"]]}) \
        .status_code == 403
    assert api(world, "outsider", "post", f"{base}/replay", {"ids": [first["id"]]}) \
        .status_code == 404
    assert keys.client.xlen(keys.deadletter) == 2

    answer = api(world, "operator", "post", f"{base}/replay", {"ids": [first["id"]]})
    assert answer.status_code == 200, answer.content
    body = answer.json()
    assert body["replayed"] == 1 and body["ids"] == [first["id"]] and body["missing"] == []
    (new_id,) = body["new_ids"]
    assert keys.client.xrange(keys.source, new_id, new_id)[0][1] == {"input": "poison",
                                                                     "n": "0"}
    assert keys.client.xlen(keys.deadletter) == 1

    # Again: it is no longer a dead letter, so nothing is added twice.
    again = api(world, "operator", "post", f"{base}/replay", {"ids": [first["id"]]}).json()
    assert again == {"replayed": 0, "ids": [], "new_ids": [], "missing": [first["id"]]}
    assert keys.client.xlen(keys.source) == 3  # two originals and one replay

    audit = AuditEvent.objects.filter(action="deployment.deadletters.replay",
                                      object_id=str(stream.pk)).order_by("pk")
    assert [a.after["replayed"] for a in audit] == [1, 0]
    assert audit[0].after["ids"] == [first["id"]] and audit[0].after["new_ids"] == [new_id]
    assert audit[0].actor_label.startswith("operator")


def test_replay_all_and_purge(world, stream, keys, tmp_path):
    dead_letter_poison(keys, tmp_path / "agent.log", count=3)
    base = f"/deployments/{stream.pk}/dead-letters"
    ids = [d["id"] for d in api(world, "viewer", "get", base).json()["items"]]

    purged = api(world, "operator", "post", f"{base}/purge", {"ids": [ids[0]]})
    assert purged.status_code == 200 and purged.json() == {"purged": 1}
    assert api(world, "viewer", "get", f"{base}/{ids[0]}").status_code == 404

    replayed = api(world, "operator", "post", f"{base}/replay", {"all": True}).json()
    assert replayed["replayed"] == 2 and sorted(replayed["ids"]) == sorted(ids[1:])
    assert keys.client.xlen(keys.deadletter) == 0
    assert keys.client.xlen(keys.source) == 5

    dead_letter_poison(keys, tmp_path / "agent.log", count=1)
    assert api(world, "operator", "post", f"{base}/purge", {"all": True}).json() == {
        "purged": 3}  # the two replayed ones failed again, and the new one
    assert api(world, "viewer", "get", base).json() == {"items": [], "count": 0, "next": None}
    actions = list(AuditEvent.objects.filter(object_id=str(stream.pk),
                                             action__startswith="deployment.deadletters")
                   .order_by("pk")
                   .values_list("action", "after__all"))
    assert actions == [("deployment.deadletters.purge", False),
                       ("deployment.deadletters.replay", True),
                       ("deployment.deadletters.purge", True)]


@pytest.mark.parametrize("body, field", [
    ({}, "ids"),
    ({"ids": ["1-0"], "all": True}, "ids"),
    ({"ids": []}, "ids"),
    ({"ids": ["not-an-id"]}, "ids"),
    ({"all": False}, "all"),
    ({"all": True, "everything": True}, "everything"),
    ([], "body"),
])
def test_bad_selections_are_422_naming_the_field(world, stream, keys, body, field):
    keys.client.xadd(keys.deadletter, {"source_id": "1-0", "input": "x", "fields": "{}"})
    world.client("operator")  # its token, audited, before counting
    before = AuditEvent.objects.count()
    for verb in ("replay", "purge"):
        answer = api(world, "operator", "post",
                     f"/deployments/{stream.pk}/dead-letters/{verb}", body)
        assert answer.status_code == 422, answer.content
        assert field in json.dumps(answer.json()["detail"])
    assert keys.client.xlen(keys.deadletter) == 1 and AuditEvent.objects.count() == before


def test_a_deployment_without_a_stream_is_409(world):
    answer = api(world, "viewer", "get", f"/deployments/{world.deployment.pk}/dead-letters")
    assert answer.status_code == 409 and "stream" in answer.json()["detail"]


def test_an_unreachable_broker_is_503_and_changes_nothing(world, keys):
    from .processes import free_port

    settings = keys.settings()
    settings["source"]["url"] = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens
    agent = AgentFactory(team=world.team, slug="gone", name="Gone", pattern="stream")
    version = VersionFactory(agent=agent, number=1, pattern_settings=settings)
    d = DeploymentFactory(agent=agent, version=version, target=world.target)
    world.client("operator")
    before = AuditEvent.objects.count()
    for method, path, body in (("get", "", None), ("post", "/replay", {"all": True}),
                               ("post", "/purge", {"ids": ["1-0"]})):
        answer = api(world, "operator", method, f"/deployments/{d.pk}/dead-letters{path}", body)
        assert answer.status_code == 503, answer.content
        assert "Redis" in answer.json()["detail"]
    assert AuditEvent.objects.count() == before

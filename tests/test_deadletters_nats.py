"""Dead letters of a NATS JetStream stream deployment through the API, on the
real NATS server (127.0.0.1:4222, stream names unique to the test): messages
dead-lettered in the reference agent's format (the body on the dead-letter
stream, Hangar-* headers) are listed newest first, inspected, replayed to
their source subject once (a second replay finds them gone) and purged, each
audited."""
from __future__ import annotations

import asyncio
import json
import uuid

import nats
import nats.js.errors
import pytest
from django.test import Client

from deployments.models import AuditEvent

from .factories import AgentFactory, DeploymentFactory, VersionFactory

pytestmark = pytest.mark.django_db
NATS_URL = "nats://127.0.0.1:4222"


class Names:
    def __init__(self):
        tag = uuid.uuid4().hex[:10]
        self.stream, self.subject = f"DL{tag}", f"dl{tag}.in"
        self.output, self.deadletter = f"DL{tag}-out", f"DL{tag}-dead"

    def settings(self) -> dict:
        return {"source": {"kind": "nats", "url": NATS_URL, "stream": self.stream,
                           "subjects": [self.subject], "durable": "workers"},
                "output_stream": self.output, "deadletter_stream": self.deadletter}

    def js(self, work):
        async def session():
            nc = await nats.connect(NATS_URL)
            try:
                return await work(nc.jetstream())
            finally:
                await nc.close()
        return asyncio.run(session())


@pytest.fixture
def names():
    found = Names()

    async def create(js):
        await js.add_stream(name=found.stream, subjects=[found.subject])
        await js.add_stream(name=found.deadletter, subjects=[found.deadletter])
    found.js(create)
    yield found

    async def drop(js):
        for name in (found.stream, found.deadletter):
            try:
                await js.delete_stream(name)
            except nats.js.errors.NotFoundError:
                pass
    found.js(drop)


def dead_letter(names: Names, body: dict, seq: int) -> None:
    """What NatsConsumer.failed publishes after the last delivery."""
    async def work(js):
        await js.publish(names.deadletter, json.dumps(body).encode(), headers={
            "Hangar-Source-Stream": names.stream, "Hangar-Source-Seq": str(seq),
            "Hangar-Source-Subject": names.subject, "Hangar-Group": "workers",
            "Hangar-Error": "poison message", "Hangar-Deliveries": "3",
            "Hangar-Instance": "consumer-1"})
    names.js(work)


def api(world, who, method, path, body=None):
    kwargs = {"data": json.dumps(body), "content_type": "application/json"} \
        if body is not None else {}
    return getattr(world.client(who), method)(f"/api/v1{path}", **kwargs)


def test_list_inspect_replay_and_purge_on_jetstream(world, names):
    agent = AgentFactory(team=world.team, slug="nats-orders", name="N", pattern="stream")
    version = VersionFactory(agent=agent, number=1, pattern_settings=names.settings())
    d = DeploymentFactory(agent=agent, version=version, target=world.target)
    for n in range(3):
        dead_letter(names, {"input": "poison", "n": n}, seq=10 + n)
    base = f"/deployments/{d.pk}/dead-letters"

    page = api(world, "viewer", "get", f"{base}?limit=2").json()
    assert page["count"] == 3 and [i["id"] for i in page["items"]] == ["3", "2"]
    newest = page["items"][0]
    assert newest["fields"] == {"input": "poison", "n": 2} and newest["input"] == "poison"
    assert (newest["source_id"], newest["deliveries"], newest["error"]) == ("12", 3,
                                                                          "poison message")
    assert newest["source_stream"] == names.stream and newest["instance"] == "consumer-1"
    assert [i["id"] for i in api(world, "viewer", "get",
                                 f"{base}?before={page['next']}").json()["items"]] == ["1"]
    assert api(world, "viewer", "get", f"{base}/2").json()["fields"]["n"] == 1
    assert api(world, "viewer", "get", f"{base}/99").status_code == 404

    assert api(world, "viewer", "post", f"{base}/replay", {"ids": ["1"]}).status_code == 403
    replayed = api(world, "operator", "post", f"{base}/replay", {"ids": ["1"]}).json()
    assert replayed["replayed"] == 1 and replayed["ids"] == ["1"]
    (new_seq,) = replayed["new_ids"]

    async def source_message(js):
        return await js.get_msg(names.stream, int(new_seq))
    msg = names.js(source_message)
    assert msg.subject == names.subject and json.loads(msg.data) == {"input": "poison", "n": 0}
    again = api(world, "operator", "post", f"{base}/replay", {"ids": ["1"]}).json()
    assert again["replayed"] == 0 and again["missing"] == ["1"]

    assert api(world, "operator", "post", f"{base}/purge", {"all": True}).json() == {
        "purged": 2}
    assert api(world, "viewer", "get", base).json()["count"] == 0
    assert list(AuditEvent.objects.filter(object_id=str(d.pk),
                                          action__startswith="deployment.deadletters")
                .order_by("pk").values_list("action", flat=True)) == [
        "deployment.deadletters.replay", "deployment.deadletters.replay",
        "deployment.deadletters.purge"]

    # The page renders for a NATS source too (no per-replica figures for this kind).
    c = Client()
    c.force_login(world.users["viewer"])
    page_html = c.get(f"/deployments/{d.pk}/").content.decode()
    assert 'data-testid="stream-deadletters">0<' in page_html

"""A thread stays on its revision during a canary (#15), seen from a caller of
the real gateway: the reference agent as real local processes (two stable,
one canary at 50 %), requests carrying ``x-session-id`` answered by replicas
of the revision that served the thread's first request, whatever the round
robin does meanwhile; requests without a thread split by the weight; once
the rollout is promoted every thread is on the new revision."""
from __future__ import annotations

import json
from collections import Counter

import pytest
import requests

from deployments import actions as registry
from deployments.audit import SYSTEM, Actor
from deployments.models import Deployment, Instance
from deployments.reconciler import reconcile_deployment
from deployments.runtimes import get_driver
from rollouts import actions, engine

from .factories import AgentFactory, TargetFactory, VersionFactory
from .processes import stop
from .rollouts_support import Driver, Servers, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def stack(world, settings, tmp_path):
    settings.HANGAR_PROGRESS_DEADLINE_S = 30
    servers = Servers(tmp_path)
    settings.HANGAR_OTLP_ENDPOINT = servers.web_url
    agent = AgentFactory(team=world.team, slug="sticky-bot")
    target = TargetFactory(team=world.team, kind="local", name="here",
                           connection={"workdir": str(tmp_path / "runtime")})

    def version(number: int):
        return VersionFactory(agent=agent, number=number, image="", port=8080,
                              command=["python", "agents/reference/agent.py"],
                              env={"AGENT_MODE": "realtime", "AGENT_VARIANT": f"v{number}"})

    d = registry.create_deployment(agent, version=version(1), target=target, replicas=2,
                                   actor=SYSTEM)
    _, key = registry.create_token(world.team, name="caller", scope="read", expires_at=None,
                                   actor=Actor(user=world.users["admin"]))
    driver = Driver(d.pk)
    driver.start()
    yield d, version, servers, driver, {"Authorization": f"Bearer {key}"}
    driver.stop()
    stop(servers.gateway)
    Deployment.objects.filter(pk=d.pk).update(state="stopped")
    for _ in range(3):
        reconcile_deployment(d.pk)
    local = get_driver(target)
    for item in local.list_instances(d.pk):
        local.remove_instance(d.pk, item.name)
    stop(servers.web)


def revisions(d) -> dict[str, int]:
    return dict(Instance.objects.filter(deployment=d).values_list("name", "revision__number"))


def test_a_session_stays_on_its_revision_until_the_canary_is_promoted(stack, world):
    d, version, servers, driver, headers = stack
    url = servers.gw("acme/sticky-bot/production/invoke")
    wait_until(lambda: Deployment.objects.get(pk=d.pk).health == "Healthy", timeout=120,
               what="revision 1 healthy", driver=driver)
    actions.set_strategy(d, actor=SYSTEM, strategy="canary",
                         steps_=[{"set_weight": 50}, {"pause": {}}])
    registry.update_deployment(d, version=version(2), actor=SYSTEM)
    wait_until(lambda: (r := engine.latest(d.pk)) is not None and r.phase == "Paused",
               timeout=120, what="the canary at 50 %", driver=driver)
    session = requests.Session()

    def call(thread: str | None = None) -> int:
        extra = {"x-session-id": thread} if thread else {}
        answer = session.post(url, json={"input": "hello"}, headers={**headers, **extra},
                              timeout=60)
        assert answer.status_code == 200, answer.text
        return revisions(d)[answer.headers["x-hangar-replica"]]

    # The gateway has the weights once requests without a thread split evenly.
    wait_until(lambda: Counter(call() for _ in range(10)) == {1: 5, 2: 5}, timeout=30,
               what="the gateway splitting 50/50")
    first = {f"thread-{i}": call(f"thread-{i}") for i in range(20)}
    assert set(first.values()) == {1, 2}  # new threads follow the weight
    for _ in range(3):  # every later turn, interleaved with others
        for thread, revision in first.items():
            assert call(thread) == revision, thread
            call()

    answer = world.client("operator").post(
        f"/api/v1/deployments/{d.pk}/rollout/promote", data=json.dumps({"full": True}),
        content_type="application/json")
    assert answer.status_code == 200 and answer.json()["rollout"]["phase"] == "Healthy"
    wait_until(lambda: set(revisions(d).values()) == {2}, timeout=120,
               what="revision 1 gone", driver=driver)
    assert {call(thread) for thread in first} == {2}

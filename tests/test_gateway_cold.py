"""Scale to zero (#13 point 6) on a real gateway process: a request held at
zero replicas is answered as soon as the starting replica answers its
readiness probe — the gateway probes it itself, so the caller does not wait
for the control plane to mark the replica ready (here it never does)."""
from __future__ import annotations

import threading

import pytest
import redis
import requests
from django.conf import settings

from deployments.models import AuditEvent, Deployment, Instance

from .factories import AgentFactory, VersionFactory
from .gateway_support import start_agent, start_gateway, wait_until
from .processes import database_env, free_port, stop
from .test_gateway import bearer

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_a_held_request_goes_to_the_replica_the_moment_it_is_ready(world, tmp_path):
    agent = AgentFactory(team=world.team, slug="sleepy")
    version = VersionFactory(agent=agent, pattern_settings={"scale_to_zero_after_s": 600,
                                                            "cold_start_wait_s": 60})
    d = Deployment.objects.create(agent=agent, version=version, target=world.target,
                                  replicas=0)
    cold = f"gw:cold:{d.pk}"
    store = redis.Redis.from_url(settings.REDIS_URL)
    store.delete(cold)
    port = free_port()
    started = []
    try:
        started.append(start_gateway(port, database_env(), tmp_path / "gateway.log",
                                     HANGAR_GATEWAY_REFRESH_S="0.3"))
        url = f"http://127.0.0.1:{port}/gw/acme/sleepy/production/invoke"
        answers: list = []
        caller = threading.Thread(target=lambda: answers.append(requests.post(
            url, json={"input": "wake up"}, headers=bearer(world), timeout=60)))
        caller.start()
        wait_until(lambda: Deployment.objects.get(pk=d.pk).replicas == 1,
                   what="the held request to wake the deployment")
        assert AuditEvent.objects.filter(object_type="deployment", object_id=str(d.pk),
                                         actor_label="gateway").exists()
        # What the runtime starts: listening at once, ready a second later. The
        # control plane records it as starting and never gets to mark it ready.
        process, agent_port = start_agent("sleepy-1", tmp_path / "agent.log",
                                          AGENT_SLOW_START_S="1")
        started.append(process)
        Instance.objects.create(deployment=d, target=world.target, name="sleepy-1",
                                address=f"127.0.0.1:{agent_port}", port=agent_port,
                                phase="starting", health="Progressing", version=version)
        caller.join(timeout=60)
        (answer,) = answers
        assert answer.status_code == 200, answer.text
        assert answer.json()["output"] and answer.headers["x-hangar-replica"] == "sleepy-1"
        assert Instance.objects.get(deployment=d).health == "Progressing"
        recorded = wait_until(lambda: store.lrange(cold, 0, -1), what="the cold start")
        assert len(recorded) == 1 and float(recorded[0]) > 1  # it waited for readiness
        # The next request goes straight through to the same replica.
        again = requests.post(url, json={"input": "still up"}, headers=bearer(world),
                              timeout=10)
        assert again.status_code == 200 and again.headers["x-hangar-replica"] == "sleepy-1"
    finally:
        for process in started:
            stop(process, timeout=10)

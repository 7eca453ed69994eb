"""Stream deployments end to end: real Docker instances of the reference agent
consuming real Redis Streams and NATS JetStream, scaled by Hangar on the lag it
reads from the broker — out, and back to zero after a shortened cooldown — with
every message processed and acknowledged, none lost; a consumer killed with
messages in flight; a source that cannot be reached at deploy time."""
from __future__ import annotations

import json
import time

import docker
import pytest

from deployments.models import Deployment, DeploymentEvent, Instance
from deployments.reconciler import reconcile_deployment
from deployments.reconciler.specs import pattern_env

from .docker_support import IMAGE, start_hosts
from .factories import AgentFactory, TargetFactory, VersionFactory
from .processes import free_port
from .stream_brokers import NatsNames, RedisKeys

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="module")
def docker_url():
    return start_hosts(2)[0]


@pytest.fixture
def client(docker_url):
    found = docker.DockerClient(base_url=docker_url)
    yield found
    found.close()


class Broker:
    """The test's stream on one kind of broker, seen from the test."""

    def __init__(self, kind: str):
        self.kind = kind
        self.names = RedisKeys() if kind == "redis" else NatsNames()

    def settings(self, **extra) -> dict:
        return self.names.settings(**extra)

    def produce(self, count: int, text=lambda i: f"message {i}") -> list[str]:
        if self.kind == "redis":
            pipe = self.names.client.pipeline(transaction=False)
            for i in range(count):
                pipe.xadd(self.names.source, {"input": text(i)})
            return list(pipe.execute())
        self.names.publish(count, lambda i: text(i).encode())
        return [str(seq) for seq in range(1, count + 1)]

    def outputs(self) -> list[str]:
        """Source ids of every output written, duplicates included."""
        if self.kind == "redis":
            return [f["source_id"] for _, f in self.names.client.xrange(self.names.output)]
        return [str(json.loads(data)["source_seq"])
                for data, _ in self.names.messages(self.names.output)]

    def dead_letters(self) -> int:
        if self.kind == "redis":
            return self.names.client.xlen(self.names.deadletter)
        return len(self.names.messages(self.names.deadletter))

    def lag(self) -> tuple[int, int]:
        return self.names.broker_lag()

    def cleanup(self) -> None:
        self.names.cleanup()


@pytest.fixture(params=["redis", "nats"])
def broker(request):
    made = Broker(request.param)
    yield made
    made.cleanup()


def stream_deployment(world, docker_url, settings, *, replicas=0, env=None) -> Deployment:
    agent = AgentFactory(team=world.team, slug=f"consumers-{free_port()}", pattern="stream")
    version = VersionFactory(agent=agent, image=IMAGE, port=8080, cpu="0.2", memory_mb=128,
                             env=env or {}, pattern_settings=settings)
    target = TargetFactory(team=world.team, name=f"docker-{agent.slug}", kind="docker",
                           connection={"url": docker_url})
    return Deployment.objects.create(agent=agent, version=version, target=target,
                                     replicas=replicas)


@pytest.fixture
def cleanup(client):
    made: list[Deployment] = []
    yield made
    for d in made:
        Deployment.objects.filter(pk=d.pk).update(state="stopped")
        for _ in range(3):
            reconcile_deployment(d.pk)
        for c in client.containers.list(all=True,
                                        filters={"label": f"hangar.deployment={d.pk}"}):
            c.remove(force=True)


def drive(d: Deployment, until, *, timeout: float, what: str, seen: list | None = None):
    """Reconcile (and autoscale) as the worker would until ``until(d)``."""
    deadline = time.monotonic() + timeout
    while True:
        reconcile_deployment(d.pk)
        d.refresh_from_db()
        if seen is not None:
            seen.append(d.replicas)
        if until(d):
            return d
        if time.monotonic() > deadline:
            last = list(d.events.order_by("-id").values_list("reason", "message")[:8])
            raise AssertionError(f"timed out waiting for {what}: {d.health} "
                                 f"{d.health_reason}; replicas {d.replicas}; {last}")
        time.sleep(0.3)


def test_5000_messages_scale_out_none_lost_then_back_to_zero(world, docker_url, client,
                                                             broker, cleanup):
    settings = broker.settings(lag_target=500, max_replicas=3, cooldown_s=4,
                               scale_down_window_s=2, polling_s=0.5, batch=50,
                               claim_idle_s=5, ack_wait_s=5, max_deliveries=3)
    d = stream_deployment(world, docker_url, settings)
    cleanup.append(d)
    reconcile_deployment(d.pk)  # creates the group / durable consumer; nothing to run
    d.refresh_from_db()
    assert d.replicas == 0
    ids = broker.produce(5000)
    seen: list[int] = []
    drive(d, lambda d: set(broker.outputs()) >= set(ids) and broker.lag() == (0, 0),
          timeout=300, what="every message processed", seen=seen)
    assert max(seen) == 3  # scaled out to its maximum on the burst
    outputs = broker.outputs()
    assert set(outputs) == set(ids)  # none lost (at least once: a duplicate is allowed)
    assert broker.dead_letters() == 0
    first = DeploymentEvent.objects.filter(deployment=d, reason="Autoscaled").order_by("id")[0]
    assert first.message.startswith("lag ") and "over 0 replicas × target 500 → 3 replicas" \
        in first.message
    # Idle for the cooldown: back to zero, no container left.
    drive(d, lambda d: d.replicas == 0 and not client.containers.list(
        all=True, filters={"label": f"hangar.deployment={d.pk}"}),
        timeout=120, what="scale to zero")
    to_zero = DeploymentEvent.objects.filter(deployment=d, reason="Autoscaled",
                                             message__contains="→ 0 replicas").get()
    assert to_zero.message.startswith("lag 0 over ") and "cooldown 4 s" in to_zero.message
    assert not Instance.objects.filter(deployment=d).exists()


def test_a_consumer_killed_with_messages_in_flight_loses_none(world, docker_url, client,
                                                              broker, cleanup):
    settings = broker.settings(batch=10, claim_idle_s=2, ack_wait_s=2, max_deliveries=5,
                               polling_s=1)
    d = stream_deployment(world, docker_url, settings, replicas=2,
                          env={"AGENT_LATENCY_MS": "40"})
    cleanup.append(d)
    drive(d, lambda d: d.health == "Healthy", timeout=120, what="two consumers ready")
    ids = broker.produce(300)
    # Let both consumers take their first batches, then kill -9 one of them.
    drive(d, lambda d: len(broker.outputs()) >= 40, timeout=60, what="work under way")
    victim = client.containers.list(filters={"label": f"hangar.deployment={d.pk}"})[0]
    victim.kill(signal="SIGKILL")
    assert broker.lag()[1] > 0  # messages delivered and unacknowledged: in flight
    drive(d, lambda d: set(broker.outputs()) >= set(ids) and broker.lag() == (0, 0),
          timeout=240, what="the killed consumer's messages reclaimed")
    assert set(broker.outputs()) == set(ids) and broker.dead_letters() == 0


def test_an_unreachable_source_at_deploy_time_is_degraded_not_a_crash_loop(
        world, docker_url, client, cleanup, settings):
    settings.HANGAR_PROGRESS_DEADLINE_S = 8
    port = free_port()
    source = {"kind": "redis", "url": f"redis://127.0.0.1:{port}/0", "stream": "in",
              "group": "workers"}
    d = stream_deployment(world, docker_url, {"source": source, "polling_s": 0.5},
                          replicas=1)
    cleanup.append(d)
    drive(d, lambda d: d.health == "Degraded" and "stream" in d.health_reason, timeout=90,
          what="Degraded for its source")
    assert d.health_reason.startswith("stream source unreachable: Redis: Error 111 "
                                      f"connecting to 127.0.0.1:{port}")
    # The consumer is kept running (not ready, waiting for its broker): no restarts.
    for _ in range(5):
        reconcile_deployment(d.pk)
        time.sleep(0.5)
    rows = list(Instance.objects.filter(deployment=d))
    assert len(rows) == 1 and rows[0].restarts == 0
    (container,) = client.containers.list(filters={"label": f"hangar.deployment={d.pk}"})
    assert container.status == "running" and container.attrs["RestartCount"] == 0
    assert f"redis unreachable: Error 111 connecting to 127.0.0.1:{port}" in \
        container.logs().decode()
    assert DeploymentEvent.objects.filter(deployment=d, reason="StreamUnreachable").count() == 1


def test_the_connection_is_injected_with_the_url_as_a_secret(world):
    keys = RedisKeys()
    try:
        agent = AgentFactory(team=world.team, slug="inject", pattern="stream")
        version = VersionFactory(agent=agent, pattern_settings=keys.settings(batch=25))
        target = TargetFactory(team=world.team, kind="local", connection={})
        d = Deployment.objects.create(agent=agent, version=version, target=target)
        env, secret = pattern_env(d, version)
        assert secret == {"STREAM_URL"}
        assert env["STREAM_KIND"] == "redis" and env["STREAM_NAME"] == keys.source
        assert env["STREAM_GROUP"] == "workers" and env["STREAM_BATCH"] == "25"
        assert env["STREAM_OUTPUT"] == keys.output
        assert env["STREAM_DEADLETTER"] == keys.deadletter
    finally:
        keys.cleanup()

"""The lag autoscaler: KEDA's rules over the HPA's, from Hangar's own reading
of a real broker; decisions on the timeline with their figures; a broker that
cannot be reached holds the replicas."""
from __future__ import annotations

import time

import pytest
import redis as redis_py

from deployments.autoscaling.lag import Policy, decide
from deployments.autoscaling.scaler import autoscale
from deployments.models import AuditEvent, Deployment, DeploymentEvent

from .factories import AgentFactory, TargetFactory, VersionFactory
from .stream_brokers import OwnServer, RedisKeys

POLICY = Policy(target=500, low=0, high=10, activation=5, cooldown_s=60, window_s=30)


def run_decisions(readings, *, current=0, policy=POLICY, state=None):
    """[(t, lag)] → [(t, desired)], each decision acted on."""
    state, out = dict(state or {}), []
    for t, lag in readings:
        d = decide(lag=lag, current=current, policy=policy, state=state, now=t)
        state, current = d.state, d.desired
        out.append((t, d.desired, d))
    return out


def test_desired_is_lag_over_target_rounded_up_and_clamped():
    d = decide(lag=4120, current=5, policy=POLICY, state={}, now=0)
    assert d.desired == 9 and d.recommendation == 9
    assert d.message(500) == "lag 4,120 over 5 replicas × target 500 → 9 replicas"
    assert decide(lag=90_000, current=10, policy=POLICY, state={}, now=0).desired == 10
    floor = Policy(target=500, low=2, high=10)
    assert decide(lag=0, current=3, policy=floor, state={}, now=1000).desired == 2


def test_activation_governs_zero_to_one_only_and_is_strictly_greater():
    assert decide(lag=5, current=0, policy=POLICY, state={}, now=0).desired == 0
    woke = decide(lag=6, current=0, policy=POLICY, state={}, now=0)
    assert woke.desired == 1 and "activation" in woke.why
    # Once running, a lag under the activation threshold still keeps a replica
    # (until the cooldown): activation is not a scale-down rule.
    assert decide(lag=3, current=1, policy=POLICY, state={"last_active": 0}, now=10).desired == 1


def test_scale_up_is_limited_per_period_as_the_hpa_does():
    # From 1: the more of 100 % (2) and 4 pods (5) per 15 s.
    steps = run_decisions([(0, 50_000), (5, 50_000), (16, 50_000), (32, 50_000)], current=1)
    assert [desired for _, desired, _ in steps] == [5, 5, 10, 10]
    assert "limited to 5" in steps[0][2].why
    big = Policy(target=1, low=0, high=100)
    assert decide(lag=1000, current=10, policy=big, state={}, now=0).desired == 20


def test_scale_down_is_stabilized_over_the_window_and_a_small_drift_is_ignored():
    steps = run_decisions([(0, 4000), (10, 1000), (20, 1000), (31, 1000), (45, 1000)],
                          current=8)
    assert [desired for _, desired, _ in steps] == [8, 8, 8, 2, 2]
    assert "stabilized" in steps[1][2].why
    # Within 10 % of what runs: no change (no flapping on noise).
    assert decide(lag=2100, current=4, policy=POLICY, state={}, now=0).desired == 4
    assert decide(lag=2600, current=4, policy=POLICY, state={}, now=0).desired == 6


def test_back_to_zero_only_after_the_cooldown_since_the_last_activity():
    steps = run_decisions([(0, 600), (10, 0), (40, 0), (59, 0), (61, 0), (80, 0)], current=1)
    assert [desired for _, desired, _ in steps] == [2, 2, 1, 1, 0, 0]
    assert "cooldown" in steps[4][2].why
    assert steps[4][2].message(500) == ("lag 0 over 1 replica × target 500 → 0 replicas "
                                        "(idle 61 s ≥ cooldown 60 s)")
    # Activity inside the cooldown restarts it.
    steps = run_decisions([(0, 0), (50, 6), (100, 0), (111, 0)], current=1,
                          state={"last_active": 0})
    assert [desired for _, desired, _ in steps] == [1, 1, 1, 0]


@pytest.mark.django_db(transaction=True)
def test_a_broker_down_holds_the_replicas_says_why_once_and_scaling_resumes(world):
    server = OwnServer("redis")
    server.start()
    keys = RedisKeys()
    try:
        agent = AgentFactory(team=world.team, slug="lagged", pattern="stream")
        settings = {"source": {"kind": "redis", "url": server.url, "stream": "in",
                               "group": "workers"},
                    "lag_target": 10, "max_replicas": 6, "cooldown_s": 0, "polling_s": 0.2}
        version = VersionFactory(agent=agent, pattern_settings=settings)
        target = TargetFactory(team=world.team, kind="local", connection={})
        d = Deployment.objects.create(agent=agent, version=version, target=target, replicas=0)
        broker = redis_py.Redis.from_url(server.url)
        assert autoscale(d.pk).desired == 0  # creates the group; nothing to do
        for i in range(35):
            broker.xadd("in", {"input": str(i)})
        time.sleep(0.25)
        decision = autoscale(d.pk)
        d.refresh_from_db()
        assert decision.lag == 35 and d.replicas == 4  # ceil(35 / 10)
        scaled = DeploymentEvent.objects.get(deployment=d, reason="Autoscaled")
        assert scaled.message == ("lag 35 over 0 replicas × target 10 → 4 replicas "
                                  "(activation: lag > 0)")
        assert AuditEvent.objects.filter(action="deployment.scale", actor_label="autoscaler",
                                         object_id=str(d.pk)).count() == 1

        server.stop()  # the broker goes away: cooldown 0 would scale to zero on "lag 0"
        for _ in range(3):
            time.sleep(0.25)
            autoscale(d.pk)
        d.refresh_from_db()
        assert d.replicas == 4
        held = DeploymentEvent.objects.filter(deployment=d, reason="AutoscaleHeld")
        assert held.count() == 1
        assert held.get().message.startswith("lag unknown, holding 4 replicas: Redis: ")
        assert str(server.port) in held.get().message

        server.start()  # back, empty (no persistence): the group is created again
        time.sleep(0.25)
        decision = autoscale(d.pk)
        d.refresh_from_db()
        assert decision.lag == 0 and d.replicas == 0
        assert DeploymentEvent.objects.filter(deployment=d, reason="StreamReachable").exists()
        assert DeploymentEvent.objects.filter(
            deployment=d, reason="Autoscaled", message__contains="→ 0 replicas").exists()
    finally:
        keys.cleanup()
        server.cleanup()

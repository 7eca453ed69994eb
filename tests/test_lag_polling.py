"""A stream's lag is read every ``polling_s``, not once per reconcile sweep:
beat's lag tick schedules each reading due before its next tick at its own
time, and a reading is claimed so that two askers never read twice in one
interval."""
from __future__ import annotations

import subprocess
import sys
import time
from itertools import pairwise

import pytest
import redis as redis_py
from django.conf import settings

from deployments.autoscaling.polling import readings_due
from deployments.models import Deployment, DeploymentEvent, StreamSample
from deployments.patterns import get_pattern
from deployments.streams import poll

from .factories import AgentFactory, TargetFactory, VersionFactory
from .processes import ROOT, database_env, free_port, stop
from .stream_brokers import RedisKeys


def stream_deployment(world, keys: RedisKeys, *, slug: str, state: str = "active",
                      pattern: str = "stream", target=None, **extra) -> Deployment:
    agent = AgentFactory(team=world.team, slug=slug, pattern=pattern)
    pattern_settings = keys.settings(**extra) if pattern == "stream" else {}
    version = VersionFactory(agent=agent, pattern_settings=pattern_settings, port=None)
    target = target or TargetFactory(team=world.team, kind="local", connection={})
    return Deployment.objects.create(agent=agent, version=version, target=target, replicas=0,
                                     state=state)


def read_at(d: Deployment, at: float) -> None:
    d.autoscale_state = {"stream": {"read_at": at}}
    Deployment.objects.filter(pk=d.pk).update(autoscale_state=d.autoscale_state)


def test_the_lag_tick_runs_more_often_than_the_sweep():
    tick = settings.CELERY_BEAT_SCHEDULE["lag-tick"]
    assert tick["task"] == "deployments.tasks.poll_lag"
    assert tick["schedule"] == settings.HANGAR_LAG_TICK_S < settings.HANGAR_SWEEP_SECONDS


@pytest.mark.django_db
def test_readings_are_scheduled_by_their_due_time(world):
    keys = RedisKeys()
    now = 1_800_000_000.0
    fast = stream_deployment(world, keys, slug="fast", polling_s=0.25)
    read_at(fast, now)
    slow = stream_deployment(world, keys, slug="slow", polling_s=10)
    read_at(slow, now - 3)
    late = stream_deployment(world, keys, slug="late", polling_s=10)
    read_at(late, now - 9.4)
    never = stream_deployment(world, keys, slug="never", polling_s=10)
    paused = stream_deployment(world, keys, slug="paused", state="paused", polling_s=0.25)
    stream_deployment(world, keys, slug="realtime", pattern="realtime")

    due = readings_due(1.0, now=now)

    # Every 0.25 s within the next second, though the sweep runs every 5 s.
    assert [c for pk, c in due if pk == fast.pk] == [0.25, 0.5, 0.75]
    assert [c for pk, c in due if pk == late.pk] == [0.6]
    assert [c for pk, c in due if pk == never.pk] == [0.0]
    assert {pk for pk, _ in due} == {fast.pk, late.pk, never.pk}
    assert slow.pk not in {pk for pk, _ in due} and paused.pk not in {pk for pk, _ in due}


@pytest.mark.django_db(transaction=True)
def test_a_reading_is_claimed_once_per_interval(world):
    keys = RedisKeys()
    try:
        d = stream_deployment(world, keys, slug="claimed", polling_s=30)
        stream = get_pattern("stream")
        assert stream.measure(d) is not None  # never read: due
        assert stream.measure(d) is None  # claimed: not due again for 30 s
        assert poll.due_in(d, 30) > 29
        assert stream.measure(d, force=True) is not None  # the stream page's "now"
        assert StreamSample.objects.filter(deployment=d).count() == 2
    finally:
        keys.cleanup()


@pytest.mark.django_db(transaction=True)
def test_a_worker_with_beat_reads_the_lag_every_polling_interval_and_scales(world, tmp_path):
    """The sweep is an hour here: every reading and decision comes from the
    lag tick, at the stream's own interval."""
    keys = RedisKeys()
    broker = redis_py.Redis.from_url(_url())
    broker.delete("celery")
    # A cluster without KEDA (its API is not even there: the passes the
    # scaling enqueues fail and retry, and nothing is started on this machine).
    cluster = TargetFactory(team=world.team, kind="kubernetes", connection={
        "host": f"http://127.0.0.1:{free_port()}", "namespace": "agents"})
    d = stream_deployment(world, keys, slug="polled", target=cluster, polling_s=0.5,
                          lag_target=10, max_replicas=6, cooldown_s=3600)
    for i in range(35):
        broker.xadd(keys.source, {"input": str(i)})
    env = database_env(HANGAR_SWEEP_SECONDS="3600", HANGAR_DATA_DIR=str(tmp_path / "data"))
    log = tmp_path / "worker.log"
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "controlplane", "worker", "--beat",
         "--concurrency=1", "--loglevel=INFO", "--schedule", str(tmp_path / "beat")],
        cwd=ROOT, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT,
        start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if (StreamSample.objects.filter(deployment=d).count() >= 6
                    and Deployment.objects.get(pk=d.pk).replicas == 4):
                break
            assert worker.poll() is None, log.read_text()[-4000:]
            time.sleep(0.2)
        else:
            raise AssertionError("the lag was not read every 0.5 s:\n" + log.read_text()[-4000:])
        samples = list(StreamSample.objects.filter(deployment=d).order_by("at"))
        assert all(s.lag == 35 and not s.error for s in samples)
        # Never two readings in one interval (a claim per reading).
        gaps = [(b.at - a.at).total_seconds() for a, b in pairwise(samples)]
        assert min(gaps) >= 0.5 * (1 - poll.EARLY) - 0.01, gaps
        assert DeploymentEvent.objects.filter(
            deployment=d, reason="Autoscaled",
            message="lag 35 over 0 replicas × target 10 → 4 replicas (activation: lag > 0)"
        ).exists()
    finally:
        stop(worker)
        broker.delete("celery")
        broker.close()
        keys.cleanup()


def _url() -> str:
    from .stream_brokers import redis_url
    return redis_url()

"""Graceful drain (#13 point 2) on real Redis and PostgreSQL: before the
reconciler removes a serving instance, the gateway's reports decide how long
it waits — no report, no wait; in-flight requests on it, wait until they are
done; never beyond the drain timeout. (The whole path, reconciler to gateway
to Docker, is tests/test_gateway_docker.py::test_scale_down_drains_…)"""
from __future__ import annotations

import time

import pytest
import redis
from django.conf import settings

from deployments import drain
from deployments.models import Instance

from .gateway_support import ready_instance

pytestmark = pytest.mark.django_db


@pytest.fixture
def reports():
    client = redis.Redis.from_url(settings.REDIS_URL)
    yield client
    for key in client.scan_iter(match="gw:inflight:*"):
        client.delete(key)


def test_without_a_gateway_report_nothing_waits_and_nothing_is_marked(world, reports):
    row = ready_instance(world.deployment, "bot-1", 40001, announce=False)
    naps = []
    drain.before_remove(world.deployment, [row], sleep=naps.append)
    row.refresh_from_db()
    assert naps == [] and row.health == "Healthy"


def test_the_removal_waits_for_the_gateways_in_flight_requests(world, reports):
    row = ready_instance(world.deployment, "bot-1", 40001, announce=False)
    key = f"gw:inflight:{world.deployment.pk}:gateway-a"
    reports.hset(key, mapping={"bot-1": 2})
    naps = []

    def nap(seconds):
        naps.append(seconds)
        if len(naps) == 3:  # the requests finish while the reconciler waits
            reports.hset(key, mapping={"bot-1": 0})

    drain.before_remove(world.deployment, [row], sleep=nap)
    stored = Instance.objects.get(pk=row.pk)
    assert (stored.health, stored.health_reason) == ("Progressing", "draining")
    assert naps[0] == drain.REPORT_GRACE_S and len(naps) == 3


def test_the_drain_timeout_bounds_the_wait(world, reports, monkeypatch):
    row = ready_instance(world.deployment, "bot-1", 40001, announce=False)
    reports.hset(f"gw:inflight:{world.deployment.pk}:gateway-a", mapping={"bot-1": 1})
    monkeypatch.setattr(drain, "DRAIN_TIMEOUT_S", 0.3)
    naps = []

    def nap(seconds):
        naps.append(seconds)
        time.sleep(seconds)

    drain.before_remove(world.deployment, [row], sleep=nap)
    assert naps[0] == drain.REPORT_GRACE_S and len(naps) >= 2


def test_the_inflight_autoscaler_reads_the_gateways_counts(world, reports):
    from deployments.autoscaling import get_signal
    from deployments.autoscaling.inflight import _reports

    _reports.clear()
    row = ready_instance(world.deployment, "bot-1", 40001, announce=False)
    signal = get_signal("inflight")
    assert signal.value(row, world.deployment) is None  # no gateway, no agent reading
    _reports.clear()
    for process, count in (("gateway-a", 3), ("gateway-b", 4)):
        reports.hset(f"gw:inflight:{world.deployment.pk}:{process}", mapping={"bot-1": count})
    assert signal.value(row, world.deployment) == 7  # summed over gateway processes
    row.inflight = 9  # the agent also counts callers that bypass the gateway
    _reports.clear()
    assert signal.value(row, world.deployment) == 9

"""The autoscaler decides from the latest observations and acts through the
audited verb outside the reconcile lock."""
from __future__ import annotations

import psycopg
import pytest
from django.db import connection

from deployments.autoscaling import SIGNALS, get_signal
from deployments.autoscaling.scaler import autoscale
from deployments.models import AuditEvent, Deployment, DeploymentEvent, Instance, Policy
from deployments.reconciler import LOCK_CLASS, reconcile_deployment

from .factories import AgentFactory, TargetFactory, VersionFactory

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def busy_deployment(tmp_path):
    agent = AgentFactory(slug="scaled")
    version = VersionFactory(agent=agent, image="", command=["python", "agent.py"], port=8080)
    target = TargetFactory(team=agent.team, kind="local",
                           connection={"workdir": str(tmp_path / "runtime")})
    deployment = Deployment.objects.create(
        agent=agent, version=version, target=target, replicas=1, autoscale_min=1,
        autoscale_max=3, autoscale_signal="inflight", autoscale_target=1)
    Instance.objects.create(deployment=deployment, target=target, name="scaled-1",
                            version=version, phase="running", health="Healthy", inflight=4)
    return deployment


def test_a_held_reconcile_lock_does_not_block_a_scale_decision(busy_deployment):
    d = busy_deployment
    params = connection.get_connection_params()
    with psycopg.connect(host=params["host"], port=params["port"], user=params["user"],
                         dbname=params["dbname"], autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s, %s)", [LOCK_CLASS, d.pk])
        # Another worker is in the middle of a pass: this one may not act on
        # the runtime, but the decision from the last observations is made.
        assert reconcile_deployment(d.pk) == "busy"
        d.refresh_from_db()
        assert d.replicas == 3  # ceil(1 × 4 in flight / target 1) = 4, capped at max 3
        event = AuditEvent.objects.filter(action="deployment.scale",
                                          object_id=str(d.pk)).latest("id")
        assert event.actor_label == "autoscaler" and event.after["replicas"] == 3
        assert DeploymentEvent.objects.filter(deployment=d, reason="Autoscaled",
                                              message__startswith="1→3").exists()
        assert d.autoscale_state["metric"] == 4
        # The lock is still the other worker's.
        held = other.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                             "AND classid = %s AND objid = %s AND granted",
                             [LOCK_CLASS, d.pk]).fetchone()[0]
        assert held == 1


def test_manual_deployments_are_left_alone(busy_deployment):
    d = busy_deployment
    Deployment.objects.filter(pk=d.pk).update(autoscale_signal="")
    reconcile_deployment(d.pk)
    d.refresh_from_db()
    assert d.replicas == 1
    assert not AuditEvent.objects.filter(action="deployment.scale").exists()


def test_signals_are_registered_by_name():
    assert set(SIGNALS) == {"cpu", "inflight", "lag"}
    assert get_signal("cpu").needs_usage and not get_signal("inflight").needs_usage
    assert get_signal("lag").from_source and get_signal("") is None


def test_a_tightened_policy_refuses_the_way_up_and_the_timeline_says_so(busy_deployment):
    d = busy_deployment
    Policy.objects.update_or_create(team=d.agent.team, defaults={"max_replicas": 1})
    for _ in range(2):  # a second decision neither raises nor repeats the warning
        assert autoscale(d.pk).desired == 3
    d.refresh_from_db()
    assert d.replicas == 1
    refused = DeploymentEvent.objects.filter(deployment=d, reason="AutoscaleRefused")
    assert refused.count() == 1
    assert "1→3" in refused.get().message and "refused" in refused.get().message
    assert not AuditEvent.objects.filter(action="deployment.scale", object_id=str(d.pk)).exists()

"""A deployment that cannot progress says so instead of showing a spinner."""
from __future__ import annotations

import pytest
from django.test import Client

from deployments.models import Deployment, Instance
from deployments.reconciler import reconcile_deployment

from .factories import AgentFactory, MembershipFactory, TargetFactory, UserFactory, VersionFactory

pytestmark = pytest.mark.django_db(transaction=True)


def page(deployment) -> str:
    viewer = UserFactory(username=f"viewer-{deployment.pk}")
    MembershipFactory(team=deployment.agent.team, user=viewer, role="viewer")
    client = Client()
    client.force_login(viewer)
    return client.get(f"/deployments/{deployment.pk}/").content.decode()


def test_a_version_the_local_runtime_cannot_run_ends_stuck_not_spinning(tmp_path):
    agent = AgentFactory(slug="no-command")
    version = VersionFactory(agent=agent, image="hangar/reference-agent:1", command=[],
                             port=8080)
    target = TargetFactory(team=agent.team, kind="local",
                           connection={"workdir": str(tmp_path / "runtime")})
    d = Deployment.objects.create(agent=agent, version=version, target=target, replicas=1)
    assert reconcile_deployment(d.pk) == "Degraded"
    d.refresh_from_db()
    assert "the local runtime needs a command" in d.health_reason
    assert Instance.objects.get(deployment=d).phase == "failed"
    assert reconcile_deployment(d.pk) == "Degraded"  # and it stays so: nothing to wait for
    html = page(d)
    assert "Generation 1 cannot be applied" in html
    assert "the local runtime needs a command" in html
    assert "Applying generation" not in html


def test_a_paused_deployment_does_not_spin_either(tmp_path):
    agent = AgentFactory(slug="paused")
    version = VersionFactory(agent=agent, image="", command=["python", "x.py"], port=8080)
    target = TargetFactory(team=agent.team, kind="local",
                           connection={"workdir": str(tmp_path / "runtime")})
    d = Deployment.objects.create(agent=agent, version=version, target=target, replicas=1,
                                  state="paused")
    assert reconcile_deployment(d.pk) == "Suspended"
    html = page(Deployment.objects.get(pk=d.pk))
    assert "Paused: generation 1 is applied when the deployment is resumed" in html
    assert "Applying generation" not in html

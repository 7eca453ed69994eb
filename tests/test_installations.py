"""Two Hangar installations sharing a Docker host (HANGAR_INSTALLATION): each
names and labels its own containers, lists and adopts only those, and its
orphan collection never removes the other's — although both count their
deployments from 1."""
from __future__ import annotations

import docker
import pytest

from deployments.models import Deployment, Instance
from deployments.reconciler import reconcile_deployment
from deployments.reconciler.gc import collect_orphans
from deployments.runtimes import get_driver

from .docker_support import IMAGE, start_hosts
from .factories import AgentFactory, TargetFactory, VersionFactory

pytestmark = [pytest.mark.slow, pytest.mark.django_db]


@pytest.fixture(scope="module")
def host():
    url = start_hosts(2)[0]
    client = docker.DockerClient(base_url=url)
    yield url, client
    for c in client.containers.list(all=True, filters={"label": "hangar.managed=blue"}):
        c.remove(force=True)
    client.close()


def converge(deployment, timeout: float = 90) -> list[Instance]:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reconcile_deployment(deployment.pk)
        deployment.refresh_from_db()
        if deployment.health == "Healthy":
            return list(Instance.objects.filter(deployment=deployment))
        time.sleep(0.5)
    raise AssertionError(f"{deployment.health}: {deployment.health_reason}")


def test_an_installation_sees_only_its_own_containers(host, settings):
    url, client = host
    settings.HANGAR_INSTALLATION = "blue"
    agent = AgentFactory(slug="shared-host")
    version = VersionFactory(agent=agent, image=IMAGE, port=8080, cpu="0.2", memory_mb=128,
                             env={"AGENT_MODE": "realtime"})
    target = TargetFactory(team=agent.team, name="docker-0", kind="docker",
                           connection={"url": url})
    deployment = Deployment.objects.create(agent=agent, version=version, target=target,
                                           replicas=1)
    [row] = converge(deployment)
    [container] = client.containers.list(filters={"label": [
        f"hangar.deployment={deployment.pk}", "hangar.managed=blue"]})
    assert container.name == f"hangar-blue-{deployment.pk}-{row.name}"
    assert container.labels["hangar.managed"] == "blue"

    # Another installation on the same host, whose database has no such
    # deployment: it lists nothing of blue's, and its collection keeps it.
    settings.HANGAR_INSTALLATION = "green"
    driver = get_driver(target)
    assert driver.list_instances(deployment.pk) == []
    assert deployment.pk not in driver.managed_deployment_ids()
    Deployment.objects.filter(pk=deployment.pk).delete()
    assert collect_orphans() == {}
    container.reload()
    assert container.status == "running"

    # Blue's own collection, once the deployment is gone, removes it.
    settings.HANGAR_INSTALLATION = "blue"
    assert collect_orphans() == {"docker-0": 1}
    assert client.containers.list(all=True, filters={"label": "hangar.managed=blue"}) == []

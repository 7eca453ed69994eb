"""Ports are allocated per target, and per port space beyond that."""
from __future__ import annotations

import pytest
from django.db import IntegrityError, transaction

from deployments.models import Deployment, Instance
from deployments.reconciler import Pass, eligible_targets
from deployments.reconciler.placement import create_rows

from .factories import AgentFactory, TargetFactory, VersionFactory

pytestmark = pytest.mark.django_db


def deployment_over(*urls: str) -> Deployment:
    agent = AgentFactory(slug="placed")
    version = VersionFactory(agent=agent, image="hangar/reference-agent:1", port=8080)
    targets = [TargetFactory(team=agent.team, name=f"docker-{i}", kind="docker",
                             labels={"pool": "p"}, connection={"url": url})
               for i, url in enumerate(urls)]
    return Deployment.objects.create(agent=agent, version=version, target=targets[0],
                                     replicas=4, placement={"pool": "p"})


def ports_by_target(d: Deployment) -> dict[str, list[int]]:
    run = Pass.open(d, eligible_targets(d))
    rows = create_rows(run, 4, [])
    found: dict[str, list[int]] = {}
    for row in rows:
        found.setdefault(run.targets[row.target_id].name, []).append(row.port)
    return found


def test_remote_hosts_reuse_ports_each_host_keeps_its_own_unique():
    found = ports_by_target(deployment_over("tcp://10.1.0.1:2376", "tcp://10.1.0.2:2376"))
    assert sorted(found) == ["docker-0", "docker-1"]
    assert found["docker-0"] == found["docker-1"]  # unique per target, not global
    assert len(set(found["docker-0"])) == 2


def test_daemons_on_one_machine_share_its_ports(tmp_path):
    found = ports_by_target(deployment_over(f"unix://{tmp_path}/a.sock",
                                            f"unix://{tmp_path}/b.sock"))
    every = found["docker-0"] + found["docker-1"]
    assert len(every) == len(set(every)) == 4


def test_the_database_refuses_one_port_twice_on_one_target():
    d = deployment_over("tcp://10.1.0.1:2376", "tcp://10.1.0.2:2376")
    first, second = eligible_targets(d)
    Instance.objects.create(deployment=d, target=first, name="a", port=20001)
    Instance.objects.create(deployment=d, target=second, name="b", port=20001)
    with pytest.raises(IntegrityError), transaction.atomic():
        Instance.objects.create(deployment=d, target=first, name="c", port=20001)

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pytest
from django.db import OperationalError
from django.db.backends.postgresql.operations import DatabaseOperations
from django.test import Client

from deployments import actions
from deployments.audit import Actor

from .factories import (
    AgentFactory,
    DeploymentFactory,
    MembershipFactory,
    SecretFactory,
    TargetFactory,
    TeamFactory,
    UserFactory,
    VersionFactory,
)

ROLES = ["admin", "operator", "viewer"]


def _flush_again_after_a_deadlock(flush):
    """Between transactional tests the database is flushed (one TRUNCATE of
    every table) while a module's live server processes — a gateway, its
    threads engine — keep reading it. PostgreSQL may pick the TRUNCATE as a
    deadlock's victim (CI saw it: a gateway's query held one table and waited
    for another the TRUNCATE held), and the next test would start on the
    previous one's rows. The flush is run again instead."""
    def execute_sql_flush(self, sql_list):
        for attempt in range(5):
            try:
                return flush(self, sql_list)
            except OperationalError as exc:
                if "deadlock detected" not in str(exc) or attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))

    return execute_sql_flush


DatabaseOperations.execute_sql_flush = _flush_again_after_a_deadlock(
    DatabaseOperations.execute_sql_flush)

# scripts/test runs the suite on two pytest-xdist workers, each with services of
# its own (tests/settings.py). A module's tests stay on one worker (its
# module-scoped servers start once); modules that share something only one
# worker may use at a time run on the same worker, one after another: the two
# Docker hosts (a test restarts one; fixtures clean up every managed container),
# and the NATS server's streams. (xdist's own ``loadgroup`` marks do not group
# under pytest 9: they rename node ids through an attribute pytest 9 no longer
# reads. The scheduler below groups by module name instead.)
SHARED = {
    "docker-hosts": {"test_batch_docker", "test_browser", "test_docker", "test_gateway_docker",
                     "test_image", "test_installations", "test_reference_agent",
                     "test_rollouts_docker", "test_stream_docker", "test_telemetry_e2e"},
    "nats": {"test_deadletters_nats", "test_keda", "test_streams"},
}


def work_unit(nodeid: str) -> str:
    """Which unit of work a test belongs to: its module, or its shared group."""
    module = nodeid.split("::", 1)[0].rpartition("/")[2].removesuffix(".py")
    return next((name for name, modules in SHARED.items() if module in modules), module)


def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class ByModuleAndShared(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return ByModuleAndShared(config, log)


@dataclass
class World:
    """One team with a member of each role, an outsider with a team of their own,
    and one of every object, plus bearer tokens for each person."""

    team: object
    other_team: object
    users: dict = field(default_factory=dict)
    tokens: dict = field(default_factory=dict)
    agent: object = None
    spare_agent: object = None
    version: object = None
    spare_version: object = None
    target: object = None
    spare_target: object = None
    deployment: object = None
    secret: object = None
    token_row: object = None
    member: object = None

    def client(self, who: str | None, scope: str = "admin") -> Client:
        if who is None:
            return Client()
        key = (who, scope)
        if key not in self.tokens:
            team = self.other_team if who == "outsider" else self.team
            _, plaintext = actions.create_token(
                team, name=f"{who}-{scope}", scope=scope, expires_at=None,
                actor=Actor(user=self.users[who]))
            self.tokens[key] = plaintext
        return Client(headers={"Authorization": f"Bearer {self.tokens[key]}"})


@pytest.fixture
def world(db) -> World:
    team = TeamFactory(slug="acme", name="Acme")
    other = TeamFactory(slug="umbrella", name="Umbrella")
    w = World(team=team, other_team=other)
    for role in ROLES:
        user = UserFactory(username=role)
        MembershipFactory(team=team, user=user, role=role)
        w.users[role] = user
    w.users["outsider"] = UserFactory(username="outsider")
    MembershipFactory(team=other, user=w.users["outsider"], role="admin")
    w.agent = AgentFactory(team=team, slug="support-bot", name="Support bot")
    w.spare_agent = AgentFactory(team=team, slug="spare", name="Spare")
    w.version = VersionFactory(agent=w.agent, number=1)
    w.spare_version = VersionFactory(agent=w.agent, number=2)
    w.target = TargetFactory(team=team, name="local-1")
    w.spare_target = TargetFactory(team=team, name="docker-1", kind="docker",
                                   connection={"url": "unix:///tmp/none.sock",
                                               "tls_key": "PRIVATE-KEY-MATERIAL"})
    w.deployment = DeploymentFactory(agent=w.agent, version=w.version, target=w.target)
    w.secret = SecretFactory(team=team, name="OPENAI_KEY", value="sk-live-supersecret")
    w.token_row, _ = actions.create_token(team, name="ci", scope="read", expires_at=None,
                                          actor=Actor(user=w.users["admin"]))
    w.member = w.users["viewer"].memberships.get(team=team)
    # Foreign objects so that list endpoints have something to leak.
    foreign_agent = AgentFactory(team=other, slug="foreign")
    DeploymentFactory(agent=foreign_agent)
    SecretFactory(team=other, name="FOREIGN_SECRET", value="foreign-secret-value")
    return w

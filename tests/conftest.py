from __future__ import annotations

from dataclasses import dataclass, field

import pytest
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

"""Real processes for the threads tests: one gateway process (which serves the
threads API under /lg/) and reference agents on loopback, kept for a module;
the rows that make an agent a deployment's ready replica are made per test."""
from __future__ import annotations

from dataclasses import dataclass

from langgraph_sdk import get_sync_client

from deployments import actions
from deployments.audit import Actor

from .factories import AgentFactory, DeploymentFactory, VersionFactory
from .gateway_support import ready_instance, wait_until


@dataclass
class Served:
    gateway: str  # http://127.0.0.1:<port>
    agents: dict  # name → port
    logs: object = None


def token_for(world, who: str = "operator", team=None) -> str:
    _, plaintext = actions.create_token(team or world.team, name=f"lg-{who}", scope="read",
                                        expires_at=None, actor=Actor(user=world.users[who]))
    return plaintext


def client_for(served: Served, key: str, team: str = "acme"):
    return get_sync_client(url=f"{served.gateway}/lg/{team}", api_key=key, timeout=30)


def realtime(world, served: Served, agent_port: str, *, slug: str = "support-bot",
             strategy: str | None = None, timeout_s: float | None = None):
    """A real-time deployment of ``slug`` whose ready replica is the agent
    process ``agent_port`` (a name in ``served.agents``)."""
    settings = {}
    if strategy:
        settings["double_texting"] = strategy
    if timeout_s:
        settings["request_timeout_s"] = timeout_s
    if slug == "support-bot" and not settings:
        deployment = world.deployment
    else:
        agent = AgentFactory(team=world.team, slug=slug, pattern="realtime")
        version = VersionFactory(agent=agent, number=1, pattern_settings=settings)
        deployment = DeploymentFactory(agent=agent, version=version, target=world.target)
    ready_instance(deployment, f"{slug}-1", served.agents[agent_port])
    return deployment


def served_assistant(client, assistant_id: str):
    """Until the gateway's table has the assistant (it reloads every 0.3 s)."""
    def found():
        try:
            return client.assistants.get(assistant_id)
        except Exception:  # noqa: BLE001 - not loaded yet
            return None
    return wait_until(found, what=f"assistant {assistant_id}")

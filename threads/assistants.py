"""Assistants: a team's real-time deployments as the LangGraph API names them
(``<agent>:<environment>``), with the double-texting default of their version."""
from __future__ import annotations

from django.utils import timezone

from deployments.models import Deployment
from deployments.patterns import get_pattern

from .actions import Assistant


def iso(value):
    return value.isoformat() if value else None


def load_assistants(team_id: int) -> list[tuple[Assistant, Deployment]]:
    found: dict[tuple[str, str], tuple[Assistant, Deployment]] = {}
    for d in (Deployment.objects.filter(agent__team_id=team_id, agent__pattern="realtime")
              .select_related("agent__team", "version").order_by("pk")):
        pattern = get_pattern(d.agent.pattern)
        options = pattern.gateway(d.version)
        found_settings = pattern.settings(d.version)
        strategy = getattr(found_settings, "double_texting", None) or "enqueue"
        assistant = Assistant(team_id=team_id, team_slug=d.agent.team.slug,
                              agent_id=d.agent_id, agent_slug=d.agent.slug,
                              environment=d.environment, strategy=strategy,
                              timeout_s=options.request_timeout_s if options else 900)
        found.setdefault((d.agent.slug, d.environment), (assistant, d))
    return list(found.values())


def assistant_json(a: Assistant, d: Deployment) -> dict:
    return {"assistant_id": a.assistant_id, "graph_id": a.agent_slug, "name": a.agent_slug,
            "description": d.agent.description or None, "config": {}, "context": {},
            "metadata": {"environment": a.environment, "multitask_strategy": a.strategy},
            "version": d.version.number if hasattr(d.version, "number") else 1,
            "created_at": iso(d.agent.created_at if hasattr(d.agent, "created_at") else None),
            "updated_at": iso(timezone.now())}


def assistant_for(team_id: int, agent_id: int, environment: str) -> Assistant | None:
    return next((a for a, _ in load_assistants(team_id)
                 if a.agent_id == agent_id and a.environment == environment), None)

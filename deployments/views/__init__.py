"""Operator UI: server-rendered pages with htmx partials from the same templates,
one module per screen. Every view is importable from here (``deployments.urls``
and ``controlplane.urls`` name them as ``views.<view>``)."""
from __future__ import annotations

from .agents import agent_create, agent_detail, agent_list, deployment_create, version_create
from .deployments import (
    deployment_delete,
    deployment_detail,
    deployment_metrics,
    deployment_restart,
    deployment_rollback,
    deployment_scale,
    deployment_state,
    instance_logs,
)
from .fleet import fleet
from .site import favicon, healthz
from .tokens import team_tokens, token_revoke, tokens_index

__all__ = [
    "agent_create", "agent_detail", "agent_list", "deployment_create", "deployment_delete",
    "deployment_detail", "deployment_metrics", "deployment_restart", "deployment_rollback",
    "deployment_scale", "deployment_state", "favicon", "fleet", "healthz", "instance_logs",
    "team_tokens", "token_revoke", "tokens_index", "version_create",
]

"""The gateway panel of a real-time deployment's page: its one URL with a curl
that works as shown, request rate, latency p50/p95, error rate and in-flight
requests per replica — re-rendered on live events and every few seconds."""
from __future__ import annotations

import os
from typing import Any

from deployments.audit import Actor
from deployments.models import Deployment, Instance
from deployments.views.panels import Panel

from .figures import cold_starts, inflight, traffic


def base_url() -> str:
    """Where callers reach the gateway (``HANGAR_GATEWAY_URL``)."""
    return (os.environ.get("HANGAR_GATEWAY_URL") or "http://127.0.0.1:8001").rstrip("/")


def gateway_context(actor: Actor, deployment: Deployment) -> dict[str, Any]:
    agent = deployment.agent
    url = f"{base_url()}/gw/{agent.team.slug}/{agent.slug}/{deployment.environment}/"
    counts = inflight(deployment.pk)
    replicas = [{"name": name, "inflight": (counts or {}).get(name, 0) if counts is not None
                 else agent_inflight, "health": health}
                for name, health, agent_inflight in Instance.objects.filter(
                    deployment=deployment).order_by("name")
                .values_list("name", "health", "inflight")]
    curl = (f"curl -N -H \"Authorization: Bearer $HANGAR_TOKEN\" -H 'Content-Type: "
            f"application/json' -d '{{\"input\": \"hello\"}}' {url}invoke")
    return {"url": url, "curl": curl, "traffic": traffic(deployment.pk),
            "replicas": replicas, "from_gateway": counts is not None,
            "cold": cold_starts(deployment.pk)}


GATEWAY = Panel("gateway", "gateway/panel.html", gateway_context)

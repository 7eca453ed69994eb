"""Template tags for a stream deployment's panel: what its messages cost."""
from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from django import template
from django.utils import timezone

from telemetry import cost

register = template.Library()


@register.simple_tag
def stream_cost(deployment, hours: int = 1) -> dict:
    """LLM plus compute cost of the last ``hours`` per 1,000 messages, a message
    being a run the agent reported (one ``invoke_agent`` trace per message)."""
    totals = cost.totals(timezone.now() - timedelta(hours=hours), deployment_id=deployment.pk)
    per_1k = None
    if totals.runs:
        per_1k = cost.quantize(totals.total_usd * Decimal(1000) / totals.runs)
    return {"hours": hours, "messages": totals.runs, "total_usd": totals.total_usd,
            "llm_usd": totals.llm_usd, "compute_usd": totals.compute_usd,
            "per_1k_usd": per_1k, "unpriced": totals.unpriced_runs}

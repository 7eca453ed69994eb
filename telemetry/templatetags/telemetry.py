from __future__ import annotations

from decimal import Decimal

from django import template

from telemetry.views import deployment_costs as costs

register = template.Library()


@register.simple_tag
def deployment_costs(deployment) -> dict:
    """Cost today / this month, a 14-day chart and recent runs of a deployment."""
    return costs(deployment)


@register.filter
def usd(value) -> str:
    """Dollars with the precision small LLM costs need; ``unknown`` for None."""
    if value is None or value == "":
        return "unknown"
    amount = Decimal(value)
    if amount == 0:
        return "$0.00"
    if abs(amount) >= 1:
        return f"${amount:,.2f}"
    if abs(amount) >= Decimal("0.01"):
        return f"${amount:.4f}"
    small = amount.quantize(Decimal("1e-8"))
    if small == 0:
        return "<$0.00000001"
    return "$" + format(small.normalize(), "f")


@register.filter
def duration(ms) -> str:
    if ms is None:
        return "—"
    ms = float(ms)
    if ms == 0:
        return "0"
    if ms < 1:
        return f"{ms * 1000:.0f} µs"
    if ms < 1000:
        return f"{ms:.1f} ms"
    if ms < 60_000:
        return f"{ms / 1000:.2f} s"
    return f"{ms / 60_000:.1f} min"


@register.filter
def thousands(value) -> str:
    return "—" if value is None else f"{int(value):,}"


@register.filter
def run_cost(run) -> str:
    """A run's LLM cost, honest about unknown prices."""
    status = run.cost_status
    if status == "unknown":
        return "unknown"
    if status == "partial":
        return f"≥ {usd(run.cost_usd)} (partly unknown)"
    return usd(run.cost_usd)

"""Per-deployment figures for the fleet overview, in two queries per page (three
when some runs today used a model without a known price)."""
from __future__ import annotations

from datetime import timedelta

from django.db.models import Count
from django.utils import timezone

from .cost import day_start, totals_by_deployment
from .models import Run

RATE_WINDOW = timedelta(minutes=5)


def deployment_summaries(deployment_ids: list[int]) -> dict[int, dict]:
    """Runs per minute (over the last five minutes) and cost so far today."""
    if not deployment_ids:
        return {}
    today = totals_by_deployment(day_start(), deployment_ids=deployment_ids)
    recent = dict(Run.objects.filter(deployment_id__in=deployment_ids,
                                     started_at__gte=timezone.now() - RATE_WINDOW)
                  .values("deployment_id").annotate(n=Count("id"))
                  .values_list("deployment_id", "n"))
    unpriced: dict[int, set[str]] = {}
    if any(t.unpriced_runs for t in today.values()):
        for pk, model in (Run.objects.filter(deployment_id__in=deployment_ids,
                                             started_at__gte=day_start(), unpriced_spans__gt=0)
                          .values_list("deployment_id", "model").distinct()):
            unpriced.setdefault(pk, set()).add(model or "a model without a name")
    found: dict[int, dict] = {}
    for pk in deployment_ids:
        totals = today.get(pk)
        found[pk] = {
            "runs_per_minute": round(recent.get(pk, 0) / (RATE_WINDOW.total_seconds() / 60), 1),
            "cost_today": totals.total_usd if totals else None,
            "cost_unknown": bool(totals and totals.unpriced_runs),
            "unpriced_models": sorted(unpriced.get(pk, ())),
        }
    return found


def deployment_series(deployment_id: int, since) -> dict:
    """Per-minute run count, median latency and LLM cost since ``since``."""
    from statistics import median

    buckets: dict = {}
    # Complete runs only, newest first: if the cap bites, the oldest minutes go.
    for started, duration, cost in (Run.objects.filter(deployment_id=deployment_id,
                                                       started_at__gte=since,
                                                       root_span_id__isnull=False)
                                    .order_by("-started_at")
                                    .values_list("started_at", "duration_ms", "cost_usd")[:20000]):
        minute = started.replace(second=0, microsecond=0)
        bucket = buckets.setdefault(minute, {"n": 0, "durations": [], "cost": 0.0})
        bucket["n"] += 1
        if duration is not None:
            bucket["durations"].append(duration)
        bucket["cost"] += float(cost or 0)
    minutes = sorted(buckets)
    return {
        "t": [m.isoformat() for m in minutes],
        "per_minute": [buckets[m]["n"] for m in minutes],
        "p50_ms": [round(median(buckets[m]["durations"]), 1) if buckets[m]["durations"] else None
                   for m in minutes],
        "cost": [round(buckets[m]["cost"], 6) for m in minutes],
    }

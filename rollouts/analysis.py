"""Analysis from Hangar's own telemetry, per revision, over a sliding window.

A revision's runs are the deployment's runs recorded by the instances that
ran it (a run names its instance; the rollout remembers every instance name
it saw per revision). Over the last ``window_s`` seconds:

* ``error_rate``: runs in error / finished runs;
* ``p95_latency_ms``: the 95th percentile of run durations;
* ``tokens_per_run``: input + output tokens per run;
* ``cost_per_run``: LLM cost per run + compute cost per run (the revision's
  instances × the window × the target's hourly rate, spread over its runs).

A measurement passes when every metric meets its bounds, fails when one does
not, and is inconclusive when the canary (or, for a relative bound, the
stable revision) has fewer than ``min_runs`` runs in the window.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

from django.utils import timezone

from deployments.models import Instance
from telemetry.cost import hourly_rate
from telemetry.models import Run, RunStatus

from .steps import METRICS


@dataclass
class Figures:
    runs: int = 0
    error_rate: float | None = None
    p95_latency_ms: float | None = None
    tokens_per_run: float | None = None
    cost_per_run: float | None = None

    def get(self, name: str) -> float | None:
        return getattr(self, name)


def p95(values: list[float]) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[max(0, math.ceil(0.95 * len(values)) - 1)]


def figures(deployment_id: int, names: list[str], revision_id: int | None,
            window_s: int, now=None) -> Figures:
    """The revision's figures over the last ``window_s`` seconds."""
    now = now or timezone.now()
    since = now - timedelta(seconds=window_s)
    if not names:
        return Figures()
    rows = list(Run.objects.filter(deployment_id=deployment_id, instance__in=names,
                                   started_at__gte=since,
                                   status__in=(RunStatus.OK, RunStatus.ERROR))
                .values_list("status", "duration_ms", "input_tokens", "output_tokens",
                             "cost_usd"))
    out = Figures(runs=len(rows))
    if not rows:
        return out
    errors = sum(1 for r in rows if r[0] == RunStatus.ERROR)
    out.error_rate = errors / len(rows)
    out.p95_latency_ms = p95([r[1] for r in rows if r[1] is not None])
    out.tokens_per_run = sum(r[2] + r[3] for r in rows) / len(rows)
    llm = sum((r[4] for r in rows), Decimal(0))
    compute = Decimal(0)
    if revision_id is not None:
        for instance in Instance.objects.filter(deployment_id=deployment_id,
                                                revision_id=revision_id).select_related(
                                                    "target", "version"):
            compute += hourly_rate(instance.target, instance.version) * Decimal(window_s) \
                / Decimal(3600)
    out.cost_per_run = float((llm + compute) / len(rows))
    return out


@dataclass
class Result:
    verdict: str  # passed | failed | inconclusive
    reason: str
    metrics: list[dict]


def _show(name: str, value: float | None) -> str:
    if value is None:
        return "n/a"
    if name == "cost_per_run":
        return f"${value:.6f}".rstrip("0").rstrip(".") if value < 0.001 else f"${value:.3f}"
    if name == "error_rate":
        return f"{value:.1%}"
    if name == "p95_latency_ms":
        return f"{value:.0f} ms"
    return f"{value:.1f}"


def judge(template: dict, canary: Figures, stable: Figures) -> Result:
    """One measurement of ``template`` from the two revisions' figures."""
    rows, failed, missing = [], [], []
    enough = canary.runs >= template["min_runs"]
    if not enough:
        missing.append(f"canary has {canary.runs} run(s) in the window, "
                       f"{template['min_runs']} needed")
    for metric in template["metrics"]:
        name = metric["name"]
        value, base = canary.get(name), stable.get(name)
        row = {"name": name, "label": METRICS[name], "canary": value, "stable": base,
               "max": metric.get("max"), "max_ratio": metric.get("max_ratio"),
               "limit": None, "ok": None}
        limits = []
        if metric.get("max") is not None:
            limits.append((metric["max"], f"{_show(name, metric['max'])}"))
        if metric.get("max_ratio") is not None:
            if stable.runs >= template["min_runs"] and base is not None:
                limit = metric["max_ratio"] * base
                limits.append((limit, f"{metric['max_ratio']:g} × stable {_show(name, base)}"))
            else:
                missing.append(f"stable has {stable.runs} run(s) in the window for "
                               f"{METRICS[name]}, {template['min_runs']} needed")
        if enough and value is not None and limits:
            limit, words = min(limits, key=lambda pair: pair[0])
            row["limit"] = limit
            row["ok"] = value <= limit
            if not row["ok"]:
                failed.append(f"{name.replace('_', ' ')} {_show(name, value)} > {words}")
        rows.append(row)
    if failed:
        return Result("failed", "; ".join(failed), rows)
    if missing:
        return Result("inconclusive", "; ".join(dict.fromkeys(missing)), rows)
    return Result("passed", "; ".join(
        f"{r['name'].replace('_', ' ')} {_show(r['name'], r['canary'])}" for r in rows), rows)

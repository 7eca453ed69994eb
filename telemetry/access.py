"""Telemetry's scoped lookups: ``deployments.access`` with telemetry's rows.

Runs, costs and budgets are readable by every member of their team;
outsiders get ``NotFound``. Budgets are written by the team's admins;
reverting what a budget did needs the operator role (it is the same as
resuming or scaling the deployments by hand). The models register how they
reach their team (``telemetry.models``), so ``deployments.access.readable``
and ``get_for`` work on them directly.
"""
from __future__ import annotations

from django.db.models import QuerySet

from deployments.access import get_for, readable
from deployments.audit import Actor
from deployments.models import Role

from .models import Budget, BudgetEvent, Run

RUNS = Run.objects.filter(root_span_id__isnull=False)


def get_run_for(actor: Actor, run_id: int) -> Run:
    return get_for(actor, RUNS, pk=run_id)


def filter_runs(runs: QuerySet[Run], *, team=None, agent=None, deployment=None, status=None,
                since=None, until=None, min_cost=None, max_cost=None, cost_unknown=None,
                model=None) -> QuerySet[Run]:
    """``runs`` narrowed by the filters of ``GET /api/v1/runs`` and the runs page
    (None: no filter). Cost bounds leave out runs whose cost is unknown (ask
    for those with ``cost_unknown``)."""
    exact = {"team_id": team, "agent_id": agent, "deployment_id": deployment, "status": status,
             "started_at__gte": since, "started_at__lt": until, "model": model}
    runs = runs.filter(**{k: v for k, v in exact.items() if v is not None})
    if min_cost is not None or max_cost is not None:
        runs = runs.filter(unpriced_spans=0)
        if min_cost is not None:
            runs = runs.filter(cost_usd__gte=min_cost)
        if max_cost is not None:
            runs = runs.filter(cost_usd__lte=max_cost)
    if cost_unknown is not None:
        runs = runs.filter(unpriced_spans__gt=0) if cost_unknown else runs.filter(unpriced_spans=0)
    return runs


def runs_for(actor: Actor, **filters) -> QuerySet[Run]:
    """The runs ``actor`` may read, narrowed by ``filters``, newest first."""
    return filter_runs(readable(actor, RUNS.all()), **filters).order_by("-started_at", "-id")


def get_budget_for(actor: Actor, budget_id: int, needed: str = Role.VIEWER) -> Budget:
    return get_for(actor, Budget.objects.select_related("team", "agent"), needed, pk=budget_id)


def get_budget_event_for(actor: Actor, event_id: int, needed: str = Role.VIEWER) -> BudgetEvent:
    return get_for(actor, BudgetEvent.objects.select_related("budget", "team"), needed,
                   pk=event_id)

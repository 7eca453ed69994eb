"""Telemetry's scoped lookups: ``deployments.access`` with telemetry's rows.

Runs, costs and budgets are readable by every member of their team;
outsiders get ``NotFound``. Budgets are written by the team's admins;
reverting what a budget did needs the operator role (it is the same as
resuming or scaling the deployments by hand). The models register how they
reach their team (``telemetry.models``), so ``deployments.access.readable``
and ``get_for`` work on them directly.
"""
from __future__ import annotations

from deployments.access import get_for
from deployments.audit import Actor
from deployments.models import Role

from .models import Budget, BudgetEvent, Run

RUNS = Run.objects.filter(root_span_id__isnull=False)


def get_run_for(actor: Actor, run_id: int) -> Run:
    return get_for(actor, RUNS, pk=run_id)


def get_budget_for(actor: Actor, budget_id: int, needed: str = Role.VIEWER) -> Budget:
    return get_for(actor, Budget.objects.select_related("team", "agent"), needed, pk=budget_id)


def get_budget_event_for(actor: Actor, event_id: int, needed: str = Role.VIEWER) -> BudgetEvent:
    return get_for(actor, BudgetEvent.objects.select_related("budget", "team"), needed,
                   pk=event_id)

"""Scoped lookups for telemetry rows, on top of ``deployments.access``.

Runs, costs and budgets are readable by every member of their team;
outsiders get ``NotFound``. Budgets are written by the team's admins;
reverting what a budget did needs the operator role (it is the same as
resuming or scaling the deployments by hand).
"""
from __future__ import annotations

from django.db.models import QuerySet

from deployments.access import require_role, team_roles
from deployments.audit import Actor
from deployments.errors import NotFound
from deployments.models import Role

from .models import Budget, BudgetEvent, Run


def readable(actor: Actor, queryset: QuerySet) -> QuerySet:
    """Rows of ``queryset`` (any model with a ``team_id``) the actor may read."""
    roles = team_roles(actor)
    if roles is None:
        return queryset
    return queryset.filter(team_id__in=list(roles))


def readable_team_ids(actor: Actor) -> list[int] | None:
    roles = team_roles(actor)
    return None if roles is None else list(roles)


def _get(actor: Actor, queryset: QuerySet, needed: str, label: str, **lookup):
    try:
        obj = readable(actor, queryset).get(**lookup)
    except (queryset.model.DoesNotExist, ValueError, TypeError):
        raise NotFound(f"{label} not found.") from None
    if needed != Role.VIEWER:
        require_role(actor, obj.team_id, needed)
    return obj


def get_run_for(actor: Actor, run_id: int) -> Run:
    return _get(actor, Run.objects.filter(root_span_id__isnull=False), Role.VIEWER, "Run",
                pk=run_id)


def get_budget_for(actor: Actor, budget_id: int, needed: str = Role.VIEWER) -> Budget:
    return _get(actor, Budget.objects.select_related("team", "agent"), needed, "Budget",
                pk=budget_id)


def get_budget_event_for(actor: Actor, event_id: int, needed: str = Role.VIEWER) -> BudgetEvent:
    return _get(actor, BudgetEvent.objects.select_related("budget", "team"), needed,
                "Budget event", pk=event_id)

"""The telemetry REST routes (`/api/v1`): runs and their traces, cost
summaries, budgets. Auth and error mapping come from the one NinjaAPI;
every fetch is scoped to the caller's teams (outsiders 404, low roles 403).
"""
from datetime import timedelta
from typing import Literal

from django.http import HttpRequest
from django.utils import timezone
from ninja import Query, Router, Schema, Status
from ninja.pagination import paginate

from deployments import access as registry_access
from deployments.api import Page, actor_of
from deployments.errors import NotFound, may_raise
from deployments.models import Agent, Deployment, Role
from deployments.schemas import CostBound, Id, Moment

from . import access, budgets, cost, traces
from .models import Budget, BudgetEvent
from .schemas import (
    BudgetEventOut,
    BudgetIn,
    BudgetOut,
    BudgetPatch,
    CostsOut,
    RunOut,
    TraceOut,
)

router = Router()  # auth: once, on the NinjaAPI


# Runs ---------------------------------------------------------------------------------


class RunFilter(Schema):
    team: Id | None = None
    agent: Id | None = None
    deployment: Id | None = None
    status: Literal["ok", "error"] | None = None
    since: Moment | None = None
    until: Moment | None = None
    min_cost: CostBound | None = None
    max_cost: CostBound | None = None
    cost_unknown: bool | None = None
    model: str | None = None


@router.get("/runs", response=list[RunOut], tags=["runs"])
@paginate(Page)
def list_runs(request: HttpRequest, filters: Query[RunFilter]):
    """Runs, newest first. `min_cost`/`max_cost` compare the LLM cost in USD and
    leave out runs whose cost is unknown (ask for those with `cost_unknown=true`)."""
    return access.runs_for(actor_of(request), **filters.model_dump())


@router.get("/runs/{run_id}", response=RunOut, tags=["runs"])
def get_run(request: HttpRequest, run_id: Id):
    return access.get_run_for(actor_of(request), run_id)


@router.get("/runs/{run_id}/trace", response=TraceOut, tags=["runs"])
def get_trace(request: HttpRequest, run_id: Id):
    """The run's spans as a tree (children by start time), with attributes,
    events, tokens and cost per LLM span. A span whose parent never arrived is
    at the top level with `missing_parent: true`."""
    run = access.get_run_for(actor_of(request), run_id)
    trace = traces.load(run)
    return {"run": run, "trace_id": run.trace_id.hex, "span_count": trace.count,
            "truncated": trace.truncated, "spans": trace.roots}


# Costs ---------------------------------------------------------------------------------


class CostQuery(Schema):
    team: Id | None = None
    agent: Id | None = None
    deployment: Id | None = None
    since: Moment | None = None
    until: Moment | None = None
    bucket: Literal["day", "hour"] = "day"


COST_WINDOW = {"day": timedelta(days=400), "hour": timedelta(days=31)}


@router.get("/costs", response=CostsOut, tags=["costs"])
@may_raise(NotFound)
def get_costs(request: HttpRequest, query: Query[CostQuery]):
    """LLM and compute cost over time for a deployment, an agent, a team, or
    every team the caller can read (default: the last 30 days, per day).
    A window is at most 400 days of daily buckets or 31 days of hourly ones:
    a longer one is answered for its last 400 (31) days, and `since`/`until`
    in the answer say which window was summed; an empty window sums nothing."""
    actor = actor_of(request)
    until = query.until or timezone.now()
    since = query.since or until - timedelta(days=30)
    since = min(max(since, until - COST_WINDOW[query.bucket]), until)
    scope: dict = {}
    if query.deployment is not None:
        deployment = registry_access.get_for(actor, Deployment.objects.select_related("agent"),
                                             pk=query.deployment)
        scope["deployment_id"] = deployment.pk
    if query.agent is not None:
        scope["agent_id"] = registry_access.get_for(actor, Agent.objects.all(),
                                                    pk=query.agent).pk
    if query.team is not None:
        scope["team_id"] = registry_access.get_team_for(actor, query.team).pk
    if not scope:
        team_ids = registry_access.team_ids(actor)
        if team_ids is not None:
            scope["team_ids"] = team_ids
    total = cost.totals(since, until, **scope)
    return {"since": since, "until": until, "bucket": query.bucket,
            "team_id": query.team, "agent_id": query.agent, "deployment_id": query.deployment,
            "totals": {**vars(total), "total_usd": total.total_usd},
            "series": cost.series(since, until, query.bucket, **scope) if since < until else []}


# Budgets -------------------------------------------------------------------------------


def _budget_out(budget: Budget) -> dict:
    data = {f: getattr(budget, f) for f in ("id", "team_id", "agent_id", "name", "amount_usd",
                                            "thresholds", "enabled", "created_at",
                                            "updated_at")}
    data["has_webhook"] = bool(budget.webhook_url)
    return {**data, **budgets.status(budget)}


@router.get("/budgets", response=list[BudgetOut], tags=["budgets"])
@paginate(Page)
def list_budgets(request: HttpRequest, team: Id | None = None, agent: Id | None = None):
    found = registry_access.readable(actor_of(request),
                                     Budget.objects.select_related("team", "agent"))
    if team is not None:
        found = found.filter(team_id=team)
    if agent is not None:
        found = found.filter(agent_id=agent)
    return [_budget_out(b) for b in found]


@router.post("/budgets", response={201: BudgetOut}, tags=["budgets"])
def create_budget(request: HttpRequest, payload: BudgetIn):
    """A monthly budget for a team (or one of its agents) with actions at
    thresholds: `alert` (event, banner, webhook), `pause`, `scale_to_zero`."""
    actor = actor_of(request)
    team = registry_access.get_team_for(actor, payload.team_id, Role.ADMIN)
    agent = None
    if payload.agent_id is not None:
        agent = Agent.objects.filter(pk=payload.agent_id, team=team).first()
        if agent is None:
            raise NotFound("Agent not found in this team.")
    data = payload.dict(exclude={"team_id", "agent_id"})
    budget = budgets.create_budget(team, agent=agent, actor=actor, **data)
    return Status(201, _budget_out(budget))


@router.get("/budgets/{budget_id}", response=BudgetOut, tags=["budgets"])
def get_budget(request: HttpRequest, budget_id: Id):
    return _budget_out(access.get_budget_for(actor_of(request), budget_id))


@router.patch("/budgets/{budget_id}", response=BudgetOut, tags=["budgets"])
def update_budget(request: HttpRequest, budget_id: Id, payload: BudgetPatch):
    actor = actor_of(request)
    budget = access.get_budget_for(actor, budget_id, Role.ADMIN)
    changes = payload.dict(exclude_unset=True)
    return _budget_out(budgets.update_budget(budget, actor=actor, **changes))


@router.delete("/budgets/{budget_id}", response={204: None}, tags=["budgets"])
def delete_budget(request: HttpRequest, budget_id: Id):
    actor = actor_of(request)
    budgets.delete_budget(access.get_budget_for(actor, budget_id, Role.ADMIN), actor=actor)
    return Status(204, None)


@router.get("/budgets/{budget_id}/events", response=list[BudgetEventOut], tags=["budgets"])
@paginate(Page)
def list_budget_events(request: HttpRequest, budget_id: Id):
    budget = access.get_budget_for(actor_of(request), budget_id)
    return BudgetEvent.objects.filter(budget=budget).select_related("reverted_by")


@router.post("/budget-events/{event_id}/revert", response=BudgetEventOut, tags=["budgets"])
def revert_budget_event(request: HttpRequest, event_id: Id):
    """Undo a threshold's action: resume (or scale back) the deployments it
    changed that nobody changed since; for an alert, dismiss it."""
    actor = actor_of(request)
    event = access.get_budget_event_for(actor, event_id, Role.OPERATOR)
    return budgets.revert_budget_event(event, actor=actor)

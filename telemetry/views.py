"""Dashboard pages: a deployment's runs and cost, a run's trace as a
waterfall, a team's costs and budgets. Server-rendered; htmx refreshes the
cost panels when ``run.finished`` / ``cost.tick`` events arrive."""
from __future__ import annotations

from datetime import timedelta

from django.contrib import messages
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_POST

from deployments import access as registry_access
from deployments.audit import Actor
from deployments.errors import DomainError
from deployments.models import Agent, Deployment, Role, Team
from deployments.web import request_actor, scoped_view

from . import access, budgets, cost, jobs, traces
from .forms import BudgetChangeForm, BudgetForm, RunFilterForm
from .models import Budget, BudgetEvent, Run, RunStatus


def chart(series: list[dict]) -> dict:
    """Bars for a cost series: heights in percent of the tallest day."""
    top = max((entry["total_usd"] for entry in series), default=0) or 1
    bars = [{**entry, "llm_pct": float(entry["llm_usd"] / top * 100),
             "compute_pct": float(entry["compute_usd"] / top * 100)} for entry in series]
    return {"bars": bars, "top": top if top != 1 or any(e["total_usd"] for e in series) else 0}


def deployment_costs(deployment: Deployment) -> dict:
    """What the cost panel shows for a deployment (also used by its template tag)."""
    now = timezone.now()
    scope = {"deployment_id": deployment.pk}
    series = cost.series(cost.day_start(now) - timedelta(days=13), now, "day", **scope)
    return {
        "today": cost.totals(cost.day_start(now), **scope),
        "month": cost.totals(cost.month_start(now), **scope),
        "chart": chart(series),
        "recent": list(Run.objects.filter(deployment_id=deployment.pk,
                                          root_span_id__isnull=False)
                       .order_by("-started_at", "-id")[:5]),
        "alerts": active_alerts(deployment.agent.team_id, agent_id=deployment.agent_id),
    }


def active_alerts(team_id: int, agent_id: int | None = None) -> list[BudgetEvent]:
    """This month's budget events nobody has reverted or dismissed: the banner."""
    events = BudgetEvent.objects.filter(team_id=team_id, month=cost.month_start().date(),
                                        reverted_at__isnull=True).select_related("budget")
    if agent_id is not None:
        events = [e for e in events if e.budget.agent_id in (None, agent_id)]
    return list(events)


@scoped_view
@require_GET
def cost_panel(request: HttpRequest, deployment_id: int) -> HttpResponse:
    deployment = registry_access.get_for(request_actor(request), registry_access.DEPLOYMENTS,
                                         pk=deployment_id)
    return render(request, "telemetry/includes/cost_panel.html", {"deployment": deployment})


@scoped_view
@require_GET
def deployment_runs(request: HttpRequest, deployment_id: int) -> HttpResponse:
    actor = request_actor(request)
    deployment = registry_access.get_for(actor, registry_access.DEPLOYMENTS, pk=deployment_id)
    runs = Run.objects.filter(deployment_id=deployment.pk, root_span_id__isnull=False)
    status = request.GET.get("status", "")
    if status in (RunStatus.OK, RunStatus.ERROR):
        runs = runs.filter(status=status)
    try:
        since = parse_datetime(request.GET.get("since", "") or "")
    except ValueError:  # well formed but impossible (February 30th): no filter
        since = None
    if since is not None:
        if timezone.is_naive(since):
            since = timezone.make_aware(since)
        runs = runs.filter(started_at__gte=since)
    page = Paginator(runs.order_by("-started_at", "-id"), 50).get_page(request.GET.get("page"))
    context = {"deployment": deployment, "page": page,
               "filters": {"status": status, "since": request.GET.get("since", "")}}
    template = "telemetry/deployment_runs.html"
    if request.htmx and request.htmx.target == "runs-table":
        template += "#runs-table"
    return render(request, template, context)


@scoped_view
@require_GET
def run_detail(request: HttpRequest, run_id: int) -> HttpResponse:
    run = access.get_run_for(request_actor(request), run_id)
    deployment = Deployment.objects.select_related("agent__team").filter(
        pk=run.deployment_id).first()
    trace = traces.load(run)
    rows = trace.flat()
    for row in rows:
        row.left_pct = max(0.0, row.offset_ms / trace.total_ms * 100)
        row.width_pct = max(0.25, min(100 - row.left_pct, row.duration_ms / trace.total_ms * 100))
    return render(request, "telemetry/run_detail.html",
                  {"run": run, "deployment": deployment, "trace": trace, "rows": rows,
                   "ticks": [trace.total_ms * i / 4 for i in range(5)]})


@scoped_view
@require_GET
def trace_run(request: HttpRequest, deployment_id: int, trace_id: str) -> HttpResponse:
    """A trace id of the deployment (a batch job run's) to its run's page, once
    its spans have arrived."""
    deployment = registry_access.get_for(request_actor(request), Deployment.objects.all(),
                                         pk=deployment_id)
    run = jobs.run_for_trace(deployment.pk, trace_id)
    if run is None:
        raise Http404("No spans of this trace have arrived yet.")
    return redirect("telemetry:run", run_id=run.pk)


@scoped_view
@require_GET
def costs_index(request: HttpRequest) -> HttpResponse:
    actor = request_actor(request)
    month = cost.month_start()
    teams = [{"team": team, "month": cost.totals(month, team_id=team.pk),
              "alerts": active_alerts(team.pk)}
             for team in registry_access.readable(actor, Team.objects.all())]
    return render(request, "telemetry/costs_index.html", {"teams": teams})


def _team_context(actor: Actor, team: Team, form: BudgetForm | None = None) -> dict:
    now = timezone.now()
    month = cost.month_start(now)
    agents = Agent.objects.filter(team=team).order_by("slug")
    spent = cost.totals_by_deployment(month, team_id=team.pk)
    per_deployment = [{"deployment": d, "month": spent.get(d.pk, cost.Totals())}
                      for d in registry_access.DEPLOYMENTS.filter(agent__team=team)
                      .order_by("agent__slug", "environment")]
    team_budgets = [{"budget": b, **budgets.status(b, now),
                     "events": list(b.events.select_related("reverted_by")[:10])}
                    for b in Budget.objects.filter(team=team).select_related("agent")]
    return {
        "team": team,
        "today": cost.totals(cost.day_start(now), team_id=team.pk),
        "month": cost.totals(month, team_id=team.pk),
        "chart": chart(cost.series(cost.day_start(now) - timedelta(days=29), now, "day",
                                   team_id=team.pk)),
        "per_deployment": per_deployment,
        "budgets": team_budgets,
        "alerts": active_alerts(team.pk),
        "is_admin": registry_access.has_role(actor, team.pk, Role.ADMIN),
        "can_operate": registry_access.has_role(actor, team.pk, Role.OPERATOR),
        "form": form or BudgetForm(agents=agents),
    }


@scoped_view
@require_GET
def team_costs(request: HttpRequest, team_id: int) -> HttpResponse:
    actor = request_actor(request)
    team = registry_access.get_team_for(actor, team_id)
    template = "telemetry/team_costs.html"
    if request.htmx and request.htmx.target == "team-costs":
        template += "#team-costs"
    return render(request, template, _team_context(actor, team))


@scoped_view
@require_POST
def budget_create(request: HttpRequest, team_id: int) -> HttpResponse:
    actor = request_actor(request)
    team = registry_access.get_team_for(actor, team_id, Role.ADMIN)
    form = BudgetForm(request.POST, agents=Agent.objects.filter(team=team))
    if form.is_valid():
        data = form.cleaned_data
        try:
            budget = budgets.create_budget(
                team, actor=actor, agent=data["agent"], name=data["name"],
                amount_usd=data["amount_usd"], thresholds=data["thresholds"],
                webhook_url=data["webhook_url"] or "")
        except DomainError as exc:
            form.add_error(None, str(exc.detail))
        else:
            messages.success(request, f"Budget {budget.name} created.")
            return redirect("telemetry:team-costs", team_id=team.pk)
    return render(request, "telemetry/team_costs.html", _team_context(actor, team, form),
                  status=422)


@scoped_view
@require_POST
def budget_update(request: HttpRequest, budget_id: int) -> HttpResponse:
    actor = request_actor(request)
    budget = access.get_budget_for(actor, budget_id, Role.ADMIN)
    form = BudgetChangeForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Give an amount of at least 0.01.")
    else:
        budgets.update_budget(budget, actor=actor, **form.cleaned_data)
        messages.success(request, f"Budget {budget.name} updated.")
    return redirect("telemetry:team-costs", team_id=budget.team_id)


@scoped_view
@require_POST
def budget_delete(request: HttpRequest, budget_id: int) -> HttpResponse:
    actor = request_actor(request)
    budget = access.get_budget_for(actor, budget_id, Role.ADMIN)
    team_id = budget.team_id
    budgets.delete_budget(budget, actor=actor)
    messages.success(request, f"Budget {budget.name} deleted.")
    return redirect("telemetry:team-costs", team_id=team_id)


@scoped_view
@require_POST
def budget_event_revert(request: HttpRequest, event_id: int) -> HttpResponse:
    actor = request_actor(request)
    event = access.get_budget_event_for(actor, event_id, Role.OPERATOR)
    try:
        event = budgets.revert_budget_event(event, actor=actor)
    except DomainError as exc:
        messages.error(request, str(exc.detail))
    else:
        restored = sum(1 for item in event.affected if item.get("revert") == "restored")
        messages.success(request, f"Reverted: {restored} deployment(s) restored."
                         if event.affected else "Alert dismissed.")
    next_url = request.POST.get("next", "")
    if next_url and url_has_allowed_host_and_scheme(next_url, {request.get_host()},
                                                    require_https=request.is_secure()):
        return redirect(next_url)
    return redirect("telemetry:team-costs", team_id=event.team_id)


@scoped_view
@require_GET
def runs_index(request: HttpRequest) -> HttpResponse:
    """Runs of every deployment the user can read, newest first, with the API's filters."""
    actor = request_actor(request)
    form = RunFilterForm(
        request.GET or None,
        teams=registry_access.readable(actor, Team.objects.order_by("slug")),
        agents=registry_access.readable(actor, Agent.objects.select_related("team")
                                        .order_by("team__slug", "slug")),
        deployments=registry_access.readable(actor, registry_access.DEPLOYMENTS
                                             .order_by("agent__slug", "environment")))
    filters = {}
    if form.is_bound:
        form.is_valid()  # errors are shown next to their fields; the valid filters apply
        filters = form.filters()
    page = Paginator(access.runs_for(actor, **filters), 50).get_page(request.GET.get("page"))
    rows = list(page)
    names = {d.pk: d for d in Deployment.objects.select_related("agent").filter(
        pk__in={r.deployment_id for r in rows})}
    for run in rows:
        run.deployment_row = names.get(run.deployment_id)
    query = request.GET.copy()
    query.pop("page", None)
    context = {"form": form, "page": page, "rows": rows, "query": query.urlencode()}
    template = "telemetry/runs.html"
    if request.htmx and request.htmx.target == "runs-list":
        template += "#runs-list"
    return render(request, template, context)

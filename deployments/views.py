"""Operator UI: server-rendered pages with htmx partials from the same templates."""
from __future__ import annotations

from datetime import timedelta
from urllib.parse import urlencode

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db import connection
from django.db.models import Count, Max, Prefetch, Q
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.templatetags.static import static
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from . import access, actions, effects, figures, revisions
from .audit import Actor
from .errors import DomainError, Invalid
from .forms import AgentForm, DeploymentForm, ScaleForm, StateForm, TokenForm, VersionForm
from .logs import log_response
from .models import (
    ROLE_RANK,
    Agent,
    ApiToken,
    Deployment,
    DeploymentState,
    Health,
    Instance,
    Pattern,
    Role,
    Target,
    Team,
    worst_health,
)
from .web import request_actor, scoped_view


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness for load balancers and the container HEALTHCHECK: the DB answers.

    ``side_effects`` counts the enqueues and live events this process lost
    after commit (Redis down; the sweep repairs them), see deployments.effects."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:  # noqa: BLE001 - any database failure is "unhealthy"
        return JsonResponse({"status": "unhealthy", "reason": str(exc)[:200]}, status=503)
    return JsonResponse({"status": "ok", "side_effects": effects.counts()})


# The helpers every app's pages share (telemetry's too), under this module's names.
_actor = request_actor
_scoped = scoped_view


def _add_errors(form, exc: DomainError) -> None:
    detail = exc.detail
    if isinstance(detail, dict):
        for field, errors in detail.items():
            target = field if field in form.fields else None
            for error in errors if isinstance(errors, list) else [errors]:
                form.add_error(target, error if target else f"{field}: {error}")
    elif isinstance(detail, list):
        for error in detail:
            form.add_error(None, str(error))
    else:
        form.add_error(None, str(detail))


def _teams_with(actor: Actor, role: str):
    roles = access.team_roles(actor)
    teams = Team.objects.all()
    if roles is None:
        return teams
    return teams.filter(pk__in=[t for t, r in roles.items() if ROLE_RANK[r] >= ROLE_RANK[role]])


@_scoped
def agent_list(request: HttpRequest) -> HttpResponse:
    actor = _actor(request)
    agents = (
        access.readable(actor, Agent.objects.select_related("team"))
        .annotate(latest_version=Max("versions__number"))
        .order_by("team__slug", "slug")
        .prefetch_related(Prefetch(
            "deployments",
            queryset=Deployment.objects.only("id", "agent_id", "health", "replicas", "state"),
        ))
    )
    team, pattern, query = (request.GET.get(k, "").strip() for k in ("team", "pattern", "q"))
    if team:
        agents = agents.filter(team__slug=team)
    if pattern in Pattern.values:
        agents = agents.filter(pattern=pattern)
    if query:
        agents = agents.filter(Q(slug__icontains=query) | Q(name__icontains=query))
    page = Paginator(agents, 50).get_page(request.GET.get("page"))
    rows = []
    for agent in page:
        deployments = list(agent.deployments.all())
        rows.append({"agent": agent, "deployments": deployments,
                     "health": worst_health(d.health for d in deployments)})
    context = {
        "rows": rows, "page": page, "patterns": Pattern.choices,
        "teams": access.readable(actor, Team.objects.all()),
        "filters": {"team": team, "pattern": pattern, "q": query},
        "can_create": _teams_with(actor, Role.OPERATOR).exists(),
    }
    template = "deployments/agent_list.html"
    if request.htmx and request.htmx.target == "agent-table":
        template += "#agent-table"
    return render(request, template, context)



@_scoped
@require_GET
def fleet(request: HttpRequest) -> HttpResponse:
    """Every deployment the user can see, live, filterable, paginated."""
    actor = _actor(request)
    deployments = access.readable(actor, DEPLOYMENT_QS.all()).annotate(
        ready=Count("instances", filter=Q(instances__health="Healthy"))
    ).order_by("agent__team__slug", "agent__slug", "environment", "pk")
    filters = {k: request.GET.get(k, "").strip() for k in ("team", "pattern", "target",
                                                             "health", "q")}
    if filters["team"]:
        deployments = deployments.filter(agent__team__slug=filters["team"])
    if filters["pattern"] in Pattern.values:
        deployments = deployments.filter(agent__pattern=filters["pattern"])
    if filters["target"]:
        deployments = deployments.filter(target__name=filters["target"])
    if filters["health"] in Health.values:
        deployments = deployments.filter(health=filters["health"])
    if filters["q"]:
        q = filters["q"]
        deployments = deployments.filter(Q(agent__slug__icontains=q) | Q(agent__name__icontains=q)
                                         | Q(environment__icontains=q))
    page = Paginator(deployments, 50).get_page(request.GET.get("page"))
    rows = list(page)
    summaries = figures.summaries([d.pk for d in rows])
    for d in rows:
        d.summary = summaries.get(d.pk, {})
    readable_teams = access.readable(actor, Team.objects.all())
    context = {
        "rows": rows, "page": page, "filters": filters, "patterns": Pattern.choices,
        "healths": Health.values, "teams": readable_teams,
        "targets": access.readable(actor, Target.objects.all()).values_list(
            "name", flat=True).distinct().order_by("name"),
        "query": urlencode({k: v for k, v in filters.items() if v}),
        "counts": dict(access.readable(actor, Deployment.objects.all()).values_list("health")
                       .annotate(n=Count("pk")).order_by()),
    }
    template = "deployments/fleet.html"
    if request.htmx and request.htmx.target == "fleet-table":
        template += "#fleet-table"
    return render(request, template, context)


@_scoped
@require_http_methods(["GET", "POST"])
def agent_create(request: HttpRequest) -> HttpResponse:
    actor = _actor(request)
    teams = _teams_with(actor, Role.OPERATOR)
    if not teams.exists():
        raise PermissionDenied("You need the operator role in a team to register agents.")
    form = AgentForm(request.POST or None, teams=teams)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            access.require_role(actor, data["team"].pk, Role.OPERATOR)
            agent = actions.create_agent(data["team"], actor=actor, slug=data["slug"],
                                         name=data["name"], pattern=data["pattern"],
                                         description=data["description"])
        except (Invalid, DomainError) as exc:
            _add_errors(form, exc)
        else:
            messages.success(request, f"Agent {agent.slug} registered. Add its first version.")
            return _redirect(request, reverse("deployments:agent", args=[agent.pk]))
    template = "deployments/agent_form.html"
    if request.htmx:
        template += "#agent-form"
    return render(request, template, {"form": form}, status=422 if form.errors else 200)


def _redirect(request: HttpRequest, url: str) -> HttpResponse:
    if request.htmx:
        response = HttpResponse(status=204)
        response["HX-Redirect"] = url
        return response
    return redirect(url)


def _agent_context(actor: Actor, agent: Agent, **extra) -> dict:
    can_write = access.has_role(actor, agent.team_id, Role.OPERATOR)
    return {
        "agent": agent,
        "versions": agent.versions.select_related("created_by").order_by("-number")[:50],
        "deployments": agent.deployments.select_related("version", "target")
        .annotate(ready=Count("instances", filter=Q(instances__health="Healthy"))),
        "can_write": can_write,
        "version_form": extra.pop("version_form", None) or VersionForm(),
        "deployment_form": extra.pop("deployment_form", None) or DeploymentForm(agent=agent),
        **extra,
    }


@_scoped
@require_GET
def agent_detail(request: HttpRequest, agent_id: int) -> HttpResponse:
    actor = _actor(request)
    agent = access.get_for(actor, Agent.objects.select_related("team"), pk=agent_id)
    return render(request, "deployments/agent_detail.html", _agent_context(actor, agent))


@_scoped
@require_POST
def version_create(request: HttpRequest, agent_id: int) -> HttpResponse:
    actor = _actor(request)
    agent = access.get_for(actor, Agent.objects.select_related("team"), Role.OPERATOR,
                           pk=agent_id)
    form = VersionForm(request.POST)
    status = 422
    if form.is_valid():
        try:
            version = actions.create_version(agent, actor=actor, **form.cleaned_data)
        except DomainError as exc:
            _add_errors(form, exc)
        else:
            messages.success(request, f"Version {version.number} created ({version.digest[:19]}).")
            form, status = VersionForm(), 200
    if not request.htmx:
        if status == 200:
            return redirect("deployments:agent", agent_id=agent.pk)
        return render(request, "deployments/agent_detail.html",
                      _agent_context(actor, agent, version_form=form), status=status)
    context = _agent_context(actor, agent, version_form=form)
    response = render(request, "deployments/agent_detail.html#versions", context, status=status)
    if status == 200:  # the deploy form offers the new version too (an out-of-band swap)
        response.content += render_to_string("deployments/agent_detail.html#deploy-form",
                                              {**context, "oob": True}, request=request).encode()
    return response


@_scoped
@require_POST
def deployment_create(request: HttpRequest, agent_id: int) -> HttpResponse:
    actor = _actor(request)
    agent = access.get_for(actor, Agent.objects.select_related("team"), Role.OPERATOR,
                           pk=agent_id)
    form = DeploymentForm(request.POST, agent=agent)
    if form.is_valid():
        data = dict(form.cleaned_data)
        try:
            deployment = actions.create_deployment(
                agent, version=data.pop("version"), target=data.pop("target"), actor=actor,
                **data)
        except DomainError as exc:
            _add_errors(form, exc)
        else:
            messages.success(request, f"Deployment {deployment} created.")
            return _redirect(request, reverse("deployments:deployment", args=[deployment.pk]))
    template = "deployments/agent_detail.html"
    if request.htmx:
        template += "#deploy-form"
    return render(request, template, _agent_context(actor, agent, deployment_form=form),
                  status=422)


def _progress(deployment: Deployment, instances: list[Instance]) -> str:
    """How applying the latest generation goes, in one word for the page:
    "done", "applying", "paused", "waiting" (a target cannot be reached) or
    "stuck" (Degraded with nothing starting or waiting to restart: it will
    not get better without a change, so the page must not show a spinner)."""
    if deployment.observed_generation >= deployment.generation:
        return "done"
    if deployment.state == DeploymentState.PAUSED:
        return "paused"
    if deployment.health == Health.UNKNOWN:
        return "waiting"
    if deployment.health == Health.DEGRADED and not any(
            i.health == Health.PROGRESSING or i.next_restart_at for i in instances):
        return "stuck"
    return "applying"


def _deployment_context(actor: Actor, deployment: Deployment, **extra) -> dict:
    instances = list(Instance.objects.filter(deployment=deployment)
                     .select_related("version", "target", "revision"))
    return {
        "deployment": deployment,
        "instances": instances,
        "timeline": deployment.events.all()[:30],
        "revisions": revisions.history(deployment),
        "in_flight": deployment.observed_generation < deployment.generation,
        "progress": _progress(deployment, instances),
        "ready": sum(1 for i in instances if i.health == "Healthy"),
        "endpoints": [i.address for i in instances if i.address and i.phase == "running"],
        "can_write": access.has_role(actor, deployment.agent.team_id, Role.OPERATOR),
        "scale_form": extra.pop("scale_form", None)
        or ScaleForm(initial={"replicas": deployment.replicas}),
        **extra,
    }


DEPLOYMENT_QS = access.DEPLOYMENTS


@_scoped
@require_GET
def deployment_detail(request: HttpRequest, deployment_id: int) -> HttpResponse:
    actor = _actor(request)
    deployment = access.get_for(actor, DEPLOYMENT_QS, pk=deployment_id)
    template = "deployments/deployment_detail.html"
    partials = {"deployment-status": "#status", "timeline": "#timeline",
                "revisions": "#revisions"}
    if request.htmx and request.htmx.target in partials:
        template += partials[request.htmx.target]
    return render(request, template, _deployment_context(actor, deployment))


@_scoped
@require_GET
def deployment_metrics(request: HttpRequest, deployment_id: int) -> JsonResponse:
    """Chart series for the deployment page (last hour)."""
    deployment = access.get_for(_actor(request), Deployment.objects.all(), pk=deployment_id)
    since = timezone.now() - timedelta(hours=1)
    samples = list(deployment.samples.filter(at__gte=since).order_by("at").values(
        "at", "desired", "ready", "cpu_percent", "memory_bytes", "inflight")[:720])
    series = {
        "t": [s["at"].isoformat() for s in samples],
        "desired": [s["desired"] for s in samples],
        "ready": [s["ready"] for s in samples],
        "cpu": [s["cpu_percent"] for s in samples],
        "memory_mib": [round(s["memory_bytes"] / 2**20, 1) if s["memory_bytes"] else None
                       for s in samples],
        "inflight": [s["inflight"] for s in samples],
    }
    series.update(figures.series(deployment.pk, since))
    return JsonResponse(series)


def _confirmed(request: HttpRequest, deployment: Deployment) -> bool:
    return request.POST.get("confirm", "").strip() == deployment.name


@_scoped
@require_POST
def deployment_delete(request: HttpRequest, deployment_id: int) -> HttpResponse:
    actor = _actor(request)
    deployment = access.get_for(actor, DEPLOYMENT_QS, Role.OPERATOR, pk=deployment_id)
    if not _confirmed(request, deployment):
        messages.error(request, f"Type {deployment.name} to confirm the deletion.")
        return _redirect(request, reverse("deployments:deployment", args=[deployment.pk]))
    agent_id = deployment.agent_id
    actions.delete_deployment(deployment, actor=actor)
    messages.success(request, f"Deployment {deployment} deleted; its instances are being removed.")
    return _redirect(request, reverse("deployments:agent", args=[agent_id]))


@_scoped
@require_POST
def deployment_scale(request: HttpRequest, deployment_id: int) -> HttpResponse:
    actor = _actor(request)
    deployment = access.get_for(actor, DEPLOYMENT_QS, Role.OPERATOR, pk=deployment_id)
    form = ScaleForm(request.POST)
    status = 422
    if form.is_valid() and form.cleaned_data["replicas"] == 0 and \
            not _confirmed(request, deployment):
        form.add_error("replicas", f"Scaling to zero stops every instance: type "
                                   f"{deployment.name} to confirm.")
    if form.is_valid() and not form.errors:
        try:
            deployment = actions.scale_deployment(
                deployment, replicas=form.cleaned_data["replicas"], actor=actor)
        except DomainError as exc:
            _add_errors(form, exc)
        else:
            status = 200
            form = ScaleForm(initial={"replicas": deployment.replicas})
            deployment = DEPLOYMENT_QS.get(pk=deployment.pk)
    message = (f"Scaling to {deployment.replicas}: generation {deployment.generation} is being "
               "applied; the status above follows it live." if status == 200 else "")
    context = _deployment_context(actor, deployment, scale_form=form, scale_message=message)
    if not request.htmx:
        if status == 200:
            messages.success(request, message)
            return redirect("deployments:deployment", deployment_id=deployment.pk)
        return render(request, "deployments/deployment_detail.html", context, status=status)
    response = render(request, "deployments/deployment_detail.html#scale", context, status=status)
    if status == 200:
        response["HX-Trigger"] = "hangar:scaled"
    return response


@_scoped
@require_GET
def instance_logs(request: HttpRequest, deployment_id: int, name: str) -> HttpResponse:
    """The last lines of an instance's output, as a partial for the logs panel."""
    deployment = access.get_for(_actor(request), DEPLOYMENT_QS, pk=deployment_id)
    instance = Instance.objects.filter(deployment=deployment, name=name).select_related(
        "target", "deployment__target").first()
    if instance is None:
        raise Http404("No such instance.")
    try:
        text = log_response(instance, tail=200, follow=False).content.decode()
    except DomainError as exc:
        text = f"[{exc.detail}]"
    return render(request, "deployments/deployment_detail.html#logs",
                  {"deployment": deployment, "instance": instance, "log_text": text})


@_scoped
@require_POST
def deployment_restart(request: HttpRequest, deployment_id: int) -> HttpResponse:
    actor = _actor(request)
    deployment = access.get_for(actor, DEPLOYMENT_QS, Role.OPERATOR, pk=deployment_id)
    actions.restart_deployment(deployment, actor=actor)
    messages.success(request, "Restarting every instance, one by one.")
    return _redirect(request, reverse("deployments:deployment", args=[deployment.pk]))


@_scoped
@require_POST
def deployment_rollback(request: HttpRequest, deployment_id: int) -> HttpResponse:
    """Re-apply the revision chosen on the deployment page."""
    actor = _actor(request)
    deployment = access.get_for(actor, DEPLOYMENT_QS, Role.OPERATOR, pk=deployment_id)
    number = request.POST.get("revision", "")
    if not number.isdigit() or int(number) < 1:
        messages.error(request, "Choose a revision to roll back to.")
    else:
        try:
            deployment = actions.rollback_deployment(deployment, revision=int(number),
                                                     actor=actor)
        except DomainError as exc:
            messages.error(request, f"Cannot roll back: {exc.detail}")
        else:
            messages.success(request, f"Rolling back to revision {number}: it is applied as "
                                      f"revision {deployment.revision.number}.")
    return _redirect(request, reverse("deployments:deployment", args=[deployment.pk]))


@_scoped
@require_POST
def deployment_state(request: HttpRequest, deployment_id: int) -> HttpResponse:
    actor = _actor(request)
    deployment = access.get_for(actor, DEPLOYMENT_QS, Role.OPERATOR, pk=deployment_id)
    form = StateForm(request.POST)
    if not form.is_valid():
        return HttpResponse("Unknown state.", status=400)
    if form.cleaned_data["state"] == "stopped" and not _confirmed(request, deployment):
        messages.error(request, f"Type {deployment.name} to confirm stopping it.")
        return _redirect(request, reverse("deployments:deployment", args=[deployment.pk]))
    actions.update_deployment(deployment, state=form.cleaned_data["state"], actor=actor)
    messages.success(request, f"Deployment is now {form.cleaned_data['state']}.")
    return _redirect(request, reverse("deployments:deployment", args=[deployment.pk]))


@require_GET
def favicon(request: HttpRequest) -> HttpResponse:
    """Browsers ask for /favicon.ico on every page; the icon is a static file."""
    return redirect(static("img/favicon.ico"))


# API tokens: a team admin's page ------------------------------------------------------


@_scoped
@require_GET
def tokens_index(request: HttpRequest) -> HttpResponse:
    """The Tokens link of the top bar: the team's page for an admin of one team,
    a choice of teams for an admin of several."""
    teams = list(_teams_with(_actor(request), Role.ADMIN).order_by("slug"))
    if len(teams) == 1:
        return redirect("deployments:team-tokens", team_id=teams[0].pk)
    return render(request, "deployments/tokens.html", {"teams": teams})


def _tokens_context(team: Team, form: TokenForm | None = None, created=None) -> dict:
    return {
        "team": team, "form": form or TokenForm(), "created": created,
        "tokens": ApiToken.objects.filter(team=team).select_related("user")
        .order_by("-created_at", "-pk")[:200],
    }


def _tokens_page(request: HttpRequest, context: dict, status: int = 200) -> HttpResponse:
    template = "deployments/tokens.html"
    if request.htmx:
        template += "#tokens-panel"
    response = render(request, template, context, status=status)
    response["Cache-Control"] = "no-store"  # a new token is in this page, once
    return response


@_scoped
@require_http_methods(["GET", "POST"])
def team_tokens(request: HttpRequest, team_id: int) -> HttpResponse:
    """A team's API tokens: create (the token is shown in this answer only), list, revoke."""
    actor = _actor(request)
    team = access.get_team_for(actor, team_id, Role.ADMIN)
    if request.method == "GET":
        return _tokens_page(request, _tokens_context(team))
    form = TokenForm(request.POST)
    if form.is_valid():
        data = form.cleaned_data
        try:
            token, plaintext = actions.create_token(
                team, name=data["name"], scope=data["scope"], expires_at=data["expires_at"],
                actor=actor)
        except DomainError as exc:
            _add_errors(form, exc)
        else:
            return _tokens_page(request, _tokens_context(
                team, created={"token": token, "plaintext": plaintext}), status=201)
    return _tokens_page(request, _tokens_context(team, form), status=422)


@_scoped
@require_POST
def token_revoke(request: HttpRequest, token_id: int) -> HttpResponse:
    actor = _actor(request)
    token = access.get_for(actor, ApiToken.objects.select_related("team", "user"), Role.ADMIN,
                           pk=token_id)
    actions.revoke_token(token, actor=actor)
    if request.htmx:
        return _tokens_page(request, _tokens_context(token.team))
    messages.success(request, f"Token {token.name} revoked.")
    return redirect("deployments:team-tokens", team_id=token.team_id)

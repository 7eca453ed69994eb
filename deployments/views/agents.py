"""The agent pages: the list, registering an agent, and an agent's page with its
versions and deployments (creating a version or a deployment posts there)."""
from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Count, Max, Prefetch, Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from .. import access, actions
from ..audit import Actor
from ..errors import DomainError, Invalid
from ..forms import AgentForm, DeploymentForm, VersionForm
from ..models import Agent, Deployment, Pattern, Role, Team, worst_health
from ..web import request_actor, scoped_view
from .common import add_errors, htmx_redirect, teams_with


@scoped_view
def agent_list(request: HttpRequest) -> HttpResponse:
    actor = request_actor(request)
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
        "can_create": teams_with(actor, Role.OPERATOR).exists(),
    }
    template = "deployments/agent_list.html"
    if request.htmx and request.htmx.target == "agent-table":
        template += "#agent-table"
    return render(request, template, context)




@scoped_view
@require_http_methods(["GET", "POST"])
def agent_create(request: HttpRequest) -> HttpResponse:
    actor = request_actor(request)
    teams = teams_with(actor, Role.OPERATOR)
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
            add_errors(form, exc)
        else:
            messages.success(request, f"Agent {agent.slug} registered. Add its first version.")
            return htmx_redirect(request, reverse("deployments:agent", args=[agent.pk]))
    template = "deployments/agent_form.html"
    if request.htmx:
        template += "#agent-form"
    return render(request, template, {"form": form}, status=422 if form.errors else 200)



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


@scoped_view
@require_GET
def agent_detail(request: HttpRequest, agent_id: int) -> HttpResponse:
    actor = request_actor(request)
    agent = access.get_for(actor, Agent.objects.select_related("team"), pk=agent_id)
    return render(request, "deployments/agent_detail.html", _agent_context(actor, agent))


@scoped_view
@require_POST
def version_create(request: HttpRequest, agent_id: int) -> HttpResponse:
    actor = request_actor(request)
    agent = access.get_for(actor, Agent.objects.select_related("team"), Role.OPERATOR,
                           pk=agent_id)
    form = VersionForm(request.POST)
    status = 422
    if form.is_valid():
        try:
            version = actions.create_version(agent, actor=actor, **form.cleaned_data)
        except DomainError as exc:
            add_errors(form, exc)
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


@scoped_view
@require_POST
def deployment_create(request: HttpRequest, agent_id: int) -> HttpResponse:
    actor = request_actor(request)
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
            add_errors(form, exc)
        else:
            messages.success(request, f"Deployment {deployment} created.")
            return htmx_redirect(request, reverse("deployments:deployment", args=[deployment.pk]))
    template = "deployments/agent_detail.html"
    if request.htmx:
        template += "#deploy-form"
    return render(request, template, _agent_context(actor, agent, deployment_form=form),
                  status=422)

"""The fleet page: every deployment the user can see, live."""
from __future__ import annotations

from urllib.parse import urlencode

from django.core.paginator import Paginator
from django.db.models import Count, Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from .. import access, figures
from ..models import Deployment, Health, Pattern, Target, Team
from ..web import request_actor, scoped_view


@scoped_view
@require_GET
def fleet(request: HttpRequest) -> HttpResponse:
    """Every deployment the user can see, live, filterable, paginated."""
    actor = request_actor(request)
    deployments = access.readable(actor, access.DEPLOYMENTS.all()).annotate(
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

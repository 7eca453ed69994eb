"""The gateway keys page: list the keys of the teams you read; operators create
one (its secret is in that answer only) and revoke. Writes go through
``gateway.actions``; the form's partial comes from the same template."""
from __future__ import annotations

from datetime import timedelta

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_http_methods, require_POST

from deployments import access
from deployments.errors import DomainError
from deployments.models import Role
from deployments.views.common import add_errors, htmx_redirect, teams_with
from deployments.web import request_actor, scoped_view

from . import actions
from .forms import GatewayKeyForm
from .models import GatewayKey
from .panels import base_url

PARTIAL = "keys-panel"


def _context(actor, form=None, created=None) -> dict:
    teams = teams_with(actor, Role.OPERATOR).order_by("slug")
    keys = access.readable(actor, GatewayKey.objects.select_related("team"))[:200]
    operated = set(teams.values_list("pk", flat=True))
    return {"form": form or GatewayKeyForm(teams=teams), "created": created,
            "can_create": bool(operated), "operated": operated, "keys": keys,
            "now": timezone.now(), "gateway_url": base_url()}


def _page(request, context: dict, status: int = 200) -> HttpResponse:
    template = "gateway/keys.html"
    if request.htmx and request.headers.get("HX-Target") == PARTIAL:
        template += f"#{PARTIAL}"
    response = render(request, template, context, status=status)
    response["Cache-Control"] = "no-store"  # a new key is in this page, once
    return response


@scoped_view
@require_http_methods(["GET", "POST"])
def keys(request: HttpRequest) -> HttpResponse:
    actor = request_actor(request)
    if request.method == "GET":
        return _page(request, _context(actor))
    form = GatewayKeyForm(request.POST, teams=teams_with(actor, Role.OPERATOR))
    if form.is_valid():
        data = form.cleaned_data
        days = data["expires_in_days"]
        try:
            team = access.get_team_for(actor, data["team"].pk, Role.OPERATOR)
            key, plaintext = actions.create_gateway_key(
                team, name=data["name"], actor=actor, agents=data["agents"],
                rate_per_s=data["rate_per_s"], concurrent=data["concurrent"],
                expires_at=timezone.now() + timedelta(days=days) if days else None)
        except DomainError as exc:
            if exc.status == 403:
                raise
            add_errors(form, exc)
        else:
            return _page(request, _context(actor, created={"key": key, "secret": plaintext}),
                         status=201)
    return _page(request, _context(actor, form), status=422)


@scoped_view
@require_POST
def revoke(request: HttpRequest, key_id: int) -> HttpResponse:
    actor = request_actor(request)
    key = access.get_for(actor, GatewayKey.objects.all(), Role.OPERATOR, pk=key_id)
    actions.revoke_gateway_key(key, actor=actor)
    return htmx_redirect(request, "/gateway/keys/")

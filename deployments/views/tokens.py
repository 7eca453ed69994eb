"""API tokens: a team admin's page to create, list and revoke them."""
from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from .. import access, actions
from ..errors import DomainError
from ..forms import TokenForm
from ..models import ApiToken, Role, Team
from ..web import request_actor, scoped_view
from .common import add_errors, teams_with


@scoped_view
@require_GET
def tokens_index(request: HttpRequest) -> HttpResponse:
    """The Tokens link of the top bar: the team's page for an admin of one team,
    a choice of teams for an admin of several."""
    teams = list(teams_with(request_actor(request), Role.ADMIN).order_by("slug"))
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


@scoped_view
@require_http_methods(["GET", "POST"])
def team_tokens(request: HttpRequest, team_id: int) -> HttpResponse:
    """A team's API tokens: create (the token is shown in this answer only), list, revoke."""
    actor = request_actor(request)
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
            add_errors(form, exc)
        else:
            return _tokens_page(request, _tokens_context(
                team, created={"token": token, "plaintext": plaintext}), status=201)
    return _tokens_page(request, _tokens_context(team, form), status=422)


@scoped_view
@require_POST
def token_revoke(request: HttpRequest, token_id: int) -> HttpResponse:
    actor = request_actor(request)
    token = access.get_for(actor, ApiToken.objects.select_related("team", "user"), Role.ADMIN,
                           pk=token_id)
    actions.revoke_token(token, actor=actor)
    if request.htmx:
        return _tokens_page(request, _tokens_context(token.team))
    messages.success(request, f"Token {token.name} revoked.")
    return redirect("deployments:team-tokens", team_id=token.team_id)

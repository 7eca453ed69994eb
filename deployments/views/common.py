"""What the pages of the app share: a domain error shown on its form, the teams
where the user has a role, and a redirect htmx follows."""
from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect

from .. import access
from ..audit import Actor
from ..errors import DomainError
from ..models import ROLE_RANK, Team


def add_errors(form, exc: DomainError) -> None:
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


def teams_with(actor: Actor, role: str):
    roles = access.team_roles(actor)
    teams = Team.objects.all()
    if roles is None:
        return teams
    return teams.filter(pk__in=[t for t, r in roles.items() if ROLE_RANK[r] >= ROLE_RANK[role]])


def htmx_redirect(request: HttpRequest, url: str) -> HttpResponse:
    if request.htmx:
        response = HttpResponse(status=204)
        response["HX-Redirect"] = url
        return response
    return redirect(url)

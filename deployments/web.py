"""What every app's operator pages share: the acting principal of a request and
the decorator that signs the user in first and turns a failed scoped lookup
into the 404 or 403 page (``access`` raises ``NotFound`` / ``Forbidden``), and
any other domain error a verb raises into a 4xx page that says why (an htmx
request shows its ``[data-error-detail]`` text; static/js/ui.js)."""
from __future__ import annotations

from collections.abc import Callable
from functools import wraps

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils.http import url_has_allowed_host_and_scheme

from .audit import Actor
from .errors import DomainError, Forbidden, NotFound


def request_actor(request: HttpRequest) -> Actor:
    """The signed-in user acting through the operator UI."""
    return Actor.from_request(request, "ui")


def error_text(detail: object) -> str:
    """A domain error's detail as one sentence a person can read."""
    if isinstance(detail, dict):
        return " ".join(
            " ".join(str(m) for m in (v if isinstance(v, list) else [v])) if k == "__all__"
            else f"{k.replace('_', ' ').capitalize()}: "
                 + " ".join(str(m) for m in (v if isinstance(v, list) else [v]))
            for k, v in detail.items())
    if isinstance(detail, list):
        return " ".join(str(m) for m in detail)
    return str(detail)


def refused(request: HttpRequest, exc: DomainError) -> HttpResponse:
    """The page for a change a verb refused (409 conflict, 422 policy…), with
    the reason, instead of a 500."""
    back = request.headers.get("Referer")
    if back and not url_has_allowed_host_and_scheme(back, {request.get_host()},
                                                     require_https=request.is_secure()):
        back = None
    status = exc.status if 400 <= exc.status < 500 else 400
    if status == 422 and request.headers.get("HX-Request"):
        # htmx swaps a 422 as a form re-rendered with its errors (base.html);
        # a refused verb outside a form is shown as an error instead.
        status = 409
    return render(request, "refused.html", {"detail": error_text(exc.detail), "back": back},
                  status=status)


def scoped_view(fn: Callable) -> Callable:
    """Log in first; domain lookups that fail become 404/403 pages, any other
    domain error a 4xx page with its reason."""

    @wraps(fn)
    def wrapper(request, *args, **kwargs):
        try:
            return fn(request, *args, **kwargs)
        except NotFound as exc:
            raise Http404(str(exc.detail)) from None
        except Forbidden as exc:
            raise PermissionDenied(str(exc.detail)) from None
        except DomainError as exc:
            return refused(request, exc)

    return login_required(wrapper)

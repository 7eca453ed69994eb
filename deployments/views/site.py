"""Site-wide answers outside the pages: the health check and the favicon."""
from __future__ import annotations

from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect
from django.templatetags.static import static
from django.views.decorators.http import require_GET

from .. import effects


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


@require_GET
def favicon(request: HttpRequest) -> HttpResponse:
    """Browsers ask for /favicon.ico on every page; the icon is a static file."""
    return redirect(static("img/favicon.ico"))

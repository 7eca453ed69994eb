"""The one NinjaAPI: routers mounted, authentication set, domain errors mapped
to status codes once, and every operation's error answers documented once.

Error statuses: 400 the body is not JSON · 401 no valid credentials · 403 the
role (or a token's scope, or CSRF for the session) does not allow a write ·
404 not found or not yours, including an id named in the body · 409 conflict
with the current state (a duplicate slug or name, something still in use) ·
422 a value not accepted, naming the field. Each answers ``{"detail": …}``.
"""
from __future__ import annotations

import logging

from django.core.exceptions import PermissionDenied
from django.db import DataError, OperationalError
from django.http import Http404
from django.http.multipartparser import MultiPartParserError
from ninja import NinjaAPI, Router
from ninja.errors import AuthenticationError, ValidationError
from ninja.operation import Operation

from deployments.api import router as deployments_router
from deployments.errors import DomainError
from deployments.schemas import Detail
from edge.api import router as edge_router
from gateway.api import router as gateway_router
from rollouts.api import router as rollouts_router
from telemetry.api import router as telemetry_router

from .auth import API_AUTH

log = logging.getLogger("controlplane.api")

ERROR_DESCRIPTIONS = {
    400: "The request body cannot be parsed (not JSON, or a malformed form upload).",
    401: "No valid credentials: send a bearer token or log in.",
    403: "Your role, the token's scope or a missing CSRF token does not allow this.",
    404: "Not found, or not yours (also for an id given in the body).",
    409: "Conflicts with the current state: a duplicate, or something still in use.",
    413: "The upload is larger than the limit.",
    422: "A value is not accepted; the detail names the field.",
    503: "A broker the operation needs (e.g. a stream's Redis) is unavailable; retry later.",
}
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


def error_statuses(operation: Operation) -> set[int]:
    """The error statuses an operation can answer, from its shape: every route
    authenticates and validates; writes check roles and can conflict; a path
    id or an ``…_id`` in the body can be unknown; a body can be unparseable.
    A view declares any other domain error with ``@may_raise``."""
    statuses = {401, 422}
    if set(operation.methods) - SAFE_METHODS:
        statuses |= {403, 409}
    if "{" in operation.path:
        statuses.add(404)
    for model in operation.models:
        if model.__ninja_param_source__ in ("body", "form", "file"):
            statuses.add(400)
            for name, payload in model.model_fields.items():
                fields = getattr(payload.annotation, "model_fields", {}) or {name: payload}
                if any(field.endswith("_id") for field in fields):
                    statuses.add(404)
    statuses |= {error.status for error in getattr(operation.view_func, "may_raise", ())}
    return statuses


def document_errors(router: Router) -> None:
    """Add each error status to the operations' documented answers with the
    ``{"detail": …}`` schema (answers only: errors never pass through here)."""
    for path_view in router.path_operations.values():
        for operation in path_view.operations:
            extra = operation.openapi_extra = dict(operation.openapi_extra or {})
            answers = extra["responses"] = dict(extra.get("responses", {}))
            for status in sorted(error_statuses(operation)):
                operation.response_models.setdefault(
                    status, operation._create_response_model(Detail))
                answers.setdefault(status, {"description": ERROR_DESCRIPTIONS[status]})

api = NinjaAPI(
    title="Hangar API",
    version="1",
    description="Register agents, deploy them to targets, and govern who may do what. "
    "Authenticate with `Authorization: Bearer <token>` (tokens from `POST /tokens`).",
    urls_namespace="api",
    docs_url="/docs",
    auth=API_AUTH,
)
for router in (deployments_router, telemetry_router, edge_router, rollouts_router,
               gateway_router):
    document_errors(router)
    api.add_router("/", router)


@api.exception_handler(DomainError)
def domain_error(request, exc: DomainError):
    return api.create_response(request, {"detail": exc.detail}, status=exc.status)


@api.exception_handler(Http404)
def not_found(request, exc):
    return api.create_response(request, {"detail": "Not found."}, status=404)


@api.exception_handler(AuthenticationError)
def unauthenticated(request, exc):
    response = api.create_response(
        request, {"detail": "Authentication required: send a bearer token or log in."},
        status=401)
    response["WWW-Authenticate"] = 'Bearer realm="hangar"'
    return response


@api.exception_handler(ValidationError)
def invalid(request, exc: ValidationError):
    return api.create_response(request, {"detail": exc.errors}, status=422)


@api.exception_handler(MultiPartParserError)
def unparseable_upload(request, exc):
    return api.create_response(
        request, {"detail": f"The form upload cannot be parsed: {exc}"}, status=400)


@api.exception_handler(DataError)
def data_error(request, exc):
    return api.create_response(request, {"detail": "A value is out of range."}, status=422)


@api.exception_handler(PermissionDenied)
def forbidden(request, exc):
    return api.create_response(request, {"detail": str(exc) or "Not allowed."}, status=403)


@api.exception_handler(OperationalError)
def database_unavailable(request, exc):
    """No connection within HANGAR_DB_POOL_TIMEOUT (or PostgreSQL is down):
    retryable, and nothing was written."""
    log.warning("API %s %s: database unavailable: %s", request.method, request.path, exc)
    response = api.create_response(
        request, {"detail": "The database is busy or unavailable; retry shortly."}, status=503)
    response["Retry-After"] = "1"
    return response


@api.exception_handler(Exception)
def server_error(request, exc):
    """Anything unexpected: logged with its traceback, answered as JSON without
    details (never Django's HTML error page on /api/)."""
    log.error("API %s %s failed", request.method, request.path, exc_info=exc)
    return api.create_response(request, {"detail": "Internal server error."}, status=500)

"""The one NinjaAPI: routers mounted, authentication set and domain errors mapped
to status codes once."""
from __future__ import annotations

from django.db import DataError
from django.http import Http404
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, ValidationError

from deployments.api import router as deployments_router
from deployments.errors import DomainError
from telemetry.api import router as telemetry_router

from .auth import API_AUTH

api = NinjaAPI(
    title="Hangar API",
    version="1",
    description="Register agents, deploy them to targets, and govern who may do what. "
    "Authenticate with `Authorization: Bearer <token>` (tokens from `POST /tokens`).",
    urls_namespace="api",
    docs_url="/docs",
    auth=API_AUTH,
)
api.add_router("/", deployments_router)
api.add_router("/", telemetry_router)


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


@api.exception_handler(DataError)
def data_error(request, exc):
    return api.create_response(request, {"detail": "A value is out of range."}, status=400)

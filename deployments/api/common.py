"""The app's one ninja ``Router`` and what every handler shares: the caller as an
``Actor`` and the pagination of every list (telemetry's lists too)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from django.http import HttpRequest
from ninja import Field, Router, Schema
from ninja.pagination import LimitOffsetPagination

from ..audit import Actor

OPERATION_PREFIX = "deployments_api"


class AppRouter(Router):
    """A ``Router`` whose operation ids do not depend on the module a handler
    lives in: ``deployments_api_<function name>``, as when the whole API was one
    module, so clients generated from the OpenAPI document keep their names."""

    def add_api_operation(self, path: str, methods: list[str], view_func: Callable, *,
                          operation_id: str | None = None, **kwargs: Any) -> None:
        operation_id = operation_id or f"{OPERATION_PREFIX}_{view_func.__name__}"
        super().add_api_operation(path, methods, view_func, operation_id=operation_id,
                                  **kwargs)


# Authentication is configured once, on the NinjaAPI (controlplane/auth.py).
router = AppRouter()


def actor_of(request: HttpRequest) -> Actor:
    return request.auth


class Page(LimitOffsetPagination):
    """Every list: ``limit`` (1–500) items from ``offset``, and the ``count``
    of all that match."""

    class Input(Schema):
        limit: Annotated[int, Field(ge=1, le=500)] = 50
        offset: Annotated[int, Field(ge=0, le=2**62)] = 0

    def paginate_queryset(self, queryset, pagination: Input, **params):
        offset, limit = pagination.offset, pagination.limit
        return {"items": queryset[offset: offset + limit], "count": self._items_count(queryset)}

"""The REST API router (`/api/v1`): registry, deployments, secrets, tokens.

Every handler resolves the caller into an ``Actor`` (bearer token or session),
fetches through ``access`` (outsiders 404, low roles 403) and changes state
only through ``actions``. One ``router`` for the app (``common``); each module
registers the routes of one resource on it, in the order imported here.
"""
from __future__ import annotations

from .common import Page, actor_of, router

# isort: off
# Registering the routes, in the order the OpenAPI document lists them.
from . import teams, registry, deployments, governance, streams, schedules  # noqa: F401
# isort: on

__all__ = ["Page", "actor_of", "router"]

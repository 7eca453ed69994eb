"""Pattern panels: the sections a pattern adds to its deployment page.

A pattern lists panel names in ``Pattern.panels`` (``deployments.patterns``);
each name is registered in ``PANELS`` with the dotted path of a :class:`Panel`
— its template and a context function ``(actor, deployment) -> dict`` — and is
loaded lazily, as patterns and runtimes are. The deployment page includes each
of its pattern's panels after the status section. Each panel's root element
carries ``id="{{ panel.id }}"`` (``panel-<name>``); an htmx request targeting
that id re-renders just the panel, which is how live events refresh it
(``hx-trigger="live"`` with ``data-live-events``, like the page's other sections).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.utils.module_loading import import_string

from ..audit import Actor
from ..models import Deployment
from ..patterns import get_pattern

# name → dotted path of a Panel. A pattern module names these in ``panels``.
PANELS: dict[str, str] = {
    "batch-schedules": "deployments.views.batch.SCHEDULES",
    "batch-new-schedule": "deployments.views.batch.NEW_SCHEDULE",
    "batch-history": "deployments.views.batch.HISTORY",
    "stream": "deployments.views.stream_panels.STREAM",
    "stream-deadletters": "deployments.views.stream_panels.DEADLETTERS",
    "gateway": "gateway.panels.GATEWAY",
}


@dataclass(frozen=True)
class Panel:
    name: str
    template: str
    context: Callable[[Actor, Deployment], dict[str, Any]]

    @property
    def element_id(self) -> str:
        return f"panel-{self.name}"


def _load(name: str) -> Panel | None:
    path = PANELS.get(name)
    return import_string(path) if path else None


def panels_for(deployment: Deployment) -> list[Panel]:
    """The registered panels of the deployment's pattern, in its order."""
    found = (_load(name) for name in get_pattern(deployment.agent.pattern).panels)
    return [p for p in found if p is not None]


def render_context(panel: Panel, actor: Actor, deployment: Deployment) -> dict[str, Any]:
    """What the panel's template sees as ``panel``: its id and name plus its context."""
    return {"id": panel.element_id, "name": panel.name, "template": panel.template,
            **panel.context(actor, deployment)}


def by_element_id(deployment: Deployment, element_id: str) -> Panel | None:
    return next((p for p in panels_for(deployment) if p.element_id == element_id), None)

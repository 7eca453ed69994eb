"""Figures other apps add to deployments' pages, without deployments importing them.

Deployments sits below the feature apps (an import-linter contract), yet its fleet
and deployment pages show figures that telemetry computes (runs per minute, cost
today, the runs chart). A feature app registers its providers here from its
``AppConfig.ready``; the pages call whatever is registered, and show nothing extra
when no app is installed.
"""
from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

SummaryProvider = Callable[[list[int]], dict[int, dict]]
SeriesProvider = Callable[[int, datetime], dict]

_summaries: list[SummaryProvider] = []
_series: dict[str, SeriesProvider] = {}


def register_summaries(provider: SummaryProvider) -> None:
    """``provider(deployment_ids) -> {id: {name: value}}`` for the fleet rows."""
    if provider not in _summaries:
        _summaries.append(provider)


def register_series(name: str, provider: SeriesProvider) -> None:
    """``provider(deployment_id, since) -> dict``: one more chart series, under ``name``."""
    _series[name] = provider


def summaries(deployment_ids: list[int]) -> dict[int, dict]:
    found: dict[int, dict] = {pk: {} for pk in deployment_ids}
    if not deployment_ids:
        return found
    for provider in _summaries:
        for pk, values in provider(deployment_ids).items():
            found.setdefault(pk, {}).update(values)
    return found


def series(deployment_id: int, since: datetime) -> dict[str, dict]:
    return {name: provider(deployment_id, since) for name, provider in _series.items()}


# Named figures a pattern reads (``patterns.edge`` reads "edge_health", which the
# edge app registers): ``provider(deployment) -> value``; None when none is registered.
FigureProvider = Callable[[object], object]
_figures: dict[str, FigureProvider] = {}


def register_figure(name: str, provider: FigureProvider) -> None:
    _figures[name] = provider


def figure(name: str, deployment) -> object:
    provider = _figures.get(name)
    return None if provider is None else provider(deployment)

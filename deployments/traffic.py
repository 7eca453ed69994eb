"""The seam progressive delivery plugs into: how many instances of which
revisions a deployment runs while a rollout moves it from one revision to the
next, and what the rollout says about the deployment's health.

``deployments`` knows no strategy beyond rolling and recreate; an app above it
(``rollouts``: canary and blue-green) registers one provider at start
(``register``). The reconciler asks it once per pass (``split_for``); ``None``
means "no rollout in charge": converge as usual.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .models import Deployment


@dataclass(frozen=True)
class Split:
    """What a rollout wants running: ``current`` instances of the deployment's
    current revision and, per other revision kept (the stable one, or the old
    one during a blue-green scale-down delay), how many of it. ``health`` and
    ``reason``, when set, are the rollout's word on the deployment's health
    ("Degraded", "rollout aborted: …"); the worse of it and the instances'
    roll-up is written. ``active`` and ``preview`` are for drivers that route
    themselves (Kubernetes Services)."""

    current: int
    others: dict[int, int] = field(default_factory=dict)  # revision id -> replicas
    health: str = ""
    reason: str = ""
    requeue_in: float | None = None
    # Where the requests that no gateway splits go (a Kubernetes Service): the
    # revision id ``active`` names (None: every revision, by replica
    # proportion), and blue-green's new revision behind a preview.
    active: int | None = None
    preview: int | None = None

    @property
    def total(self) -> int:
        return self.current + sum(self.others.values())


Provider = Callable[["Deployment", int], "Split | None"]
_providers: list[Provider] = []


def register(provider: Provider) -> None:
    """Install ``provider(deployment, desired_replicas)`` (once, from an app's ready)."""
    if provider not in _providers:
        _providers.append(provider)


def split_for(deployment: Deployment, desired: int) -> Split | None:
    for provider in _providers:
        split = provider(deployment, desired)
        if split is not None:
            return split
    return None


# Health changes: a rollout app tells its team's hooks (deployments sends nothing) --

HealthListener = Callable[["Deployment", str, str, str], None]
_health_listeners: list[HealthListener] = []


def on_health_change(listener: HealthListener) -> None:
    """Call ``listener(deployment, before, health, reason)`` when a pass changes
    the deployment's health (after its row is written)."""
    if listener not in _health_listeners:
        _health_listeners.append(listener)


def health_changed(deployment: Deployment, before: str, health: str, reason: str) -> None:
    for listener in _health_listeners:
        listener(deployment, before, health, reason)


# Batch: which revision a job run runs while a rollout splits (by the weight) --

JobPicker = Callable[["Deployment", int], "int | None"]
_job_pickers: list[JobPicker] = []


def register_jobs(picker: JobPicker) -> None:
    """Install ``picker(deployment, run_id)`` (once, from an app's ready)."""
    if picker not in _job_pickers:
        _job_pickers.append(picker)


def job_revision(deployment: Deployment, run_id: int) -> int | None:
    """The revision id job run ``run_id`` of ``deployment`` should run (a
    batch deployment under a canary: the weight's share of its runs on the
    new revision); None: the deployment's current revision."""
    for picker in _job_pickers:
        revision = picker(deployment, run_id)
        if revision is not None:
            return revision
    return None

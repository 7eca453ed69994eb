"""The pattern contract: what a deployment pattern contributes to Hangar.

A pattern (``Agent.pattern``: batch, stream, realtime, edge) is registered here
by name, like a runtime driver by kind, and loaded lazily. It contributes:

* ``settings_schema`` — the pydantic model its ``AgentVersion.pattern_settings``
  must satisfy; :meth:`Pattern.validate_settings` is called at version creation
  and answers 422 naming the field;
* :meth:`Pattern.desired` — the units it wants from the runtime (how many
  long-running replicas, and for drivers that manage replicas themselves, the
  extra parts of the whole-deployment spec such as a schedule);
* :meth:`Pattern.autoscaling_signal` — which autoscaler signal drives it;
* :meth:`Pattern.measure` — a reading of what it watches outside the runtime
  (a stream's lag), and :meth:`Pattern.instance_env` — what instances are given;
* :meth:`Pattern.instance_health` and :meth:`Pattern.rollup` — its health rules;
* ``panels`` — the sections it adds to its deployment page (names registered in
  ``deployments.views.panels.PANELS``), after the sections every deployment has.

Nothing outside this package branches on the pattern's name.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from django.utils.module_loading import import_string
from pydantic import BaseModel, ConfigDict, ValidationError

from ..errors import Unprocessable

PATTERNS: dict[str, str] = {
    "batch": "deployments.patterns.batch.BatchPattern",
    "stream": "deployments.patterns.stream.StreamPattern",
    "realtime": "deployments.patterns.realtime.RealtimePattern",
    "edge": "deployments.patterns.edge.EdgePattern",
}


class PatternSettings(BaseModel):
    """Base of every pattern's settings schema: unknown keys are refused, so a
    typo ("schedul") is an error at version creation, not a silent no-op."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class Desired:
    """What a pattern wants the runtime to run for one deployment."""

    replicas: int  # long-running units to keep up (0 when paused/stopped or scaled to zero)
    # Extra fields of runtimes.base.DeploymentSpec, for drivers that manage
    # replicas themselves (e.g. {"schedule": "*/5 * * * *"} for a CronJob).
    spec_extras: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    """A health word (models.Health values) with its human reason."""

    health: str
    reason: str = ""
    converged: bool = False  # observed_generation may be written
    requeue_in: float | None = None  # the pass wants another look this soon


@dataclass(frozen=True)
class GatewayOptions:
    """What the gateway needs of a version it serves."""

    request_timeout_s: float = 15 * 60
    concurrency: int | None = None  # requests in flight per replica (None: unlimited)
    # Scale to zero after this many idle seconds (None: never); a request arriving
    # at zero is held up to ``cold_start_wait_s`` while the first replica starts.
    scale_to_zero_after_s: int | None = None
    cold_start_wait_s: float = 120


class Pattern:
    """Contract; ``service.ServicePattern`` is the long-running implementation."""

    name: ClassVar[str] = ""
    settings_schema: ClassVar[type[PatternSettings]] = PatternSettings
    # Autoscaler signals (deployments.autoscaling registry names) this pattern accepts.
    autoscaling_signals: ClassVar[tuple[str, ...]] = ()
    # Sections this pattern adds to the deployment page, in order (names registered
    # in deployments.views.panels.PANELS; the status, charts, logs, revisions and
    # timeline sections every deployment has are not listed).
    panels: ClassVar[tuple[str, ...]] = ()
    # Its deployments have schedules that fire jobs (deployments.batch).
    fires_jobs: ClassVar[bool] = False
    # Its deployments are measured outside the runtime every polling interval
    # (``measure``, ``polling_s``, ``reading_due_at``): a stream's lag.
    measures: ClassVar[bool] = False

    def validate_settings(self, data: dict[str, Any] | None) -> dict[str, Any]:
        """The settings as stored (only what was given), or Unprocessable (422)
        with one message per bad field, each naming it."""
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise Unprocessable({"pattern_settings": ["Give a JSON object."]})
        try:
            parsed = self.settings_schema.model_validate(data)
        except ValidationError as exc:
            raise Unprocessable({"pattern_settings": [
                f"{'.'.join(str(p) for p in err['loc']) or 'pattern_settings'}: {err['msg']}"
                for err in exc.errors()
            ]}) from None
        return parsed.model_dump(mode="json", exclude_unset=True)

    def settings(self, version) -> PatternSettings:
        """A version's stored settings, parsed (stored ones were validated)."""
        return self.settings_schema.model_validate(version.pattern_settings or {})

    def desired(self, deployment, version, *, features) -> Desired:
        raise NotImplementedError

    def gateway(self, version) -> GatewayOptions | None:
        """How the gateway (``gateway/``) serves this pattern's deployments at
        ``/gw/<team>/<agent>/<environment>/``; None: not behind the gateway."""
        return None

    def schedule_specs(self, version) -> list:
        """The schedules a version's settings declare (``patterns.batch.ScheduleSpec``)."""
        return []

    def autoscaling_signal(self, deployment) -> str | None:
        signal = deployment.autoscale_signal
        return signal if signal in self.autoscaling_signals else None

    def measure(self, deployment, *, force: bool = False):
        """Read what the pattern watches outside the runtime (a stream's lag,
        from its broker) when a reading is due; called after each pass, outside
        the reconcile lock. None: nothing read."""
        return None

    def polling_s(self, version) -> float | None:
        """How often ``measure`` wants to read (None: it reads nothing)."""
        return None

    def reading_due_at(self, deployment) -> float | None:
        """When the next reading is due (unix time; None: none wanted)."""
        return None

    def instance_env(self, deployment, version, *, secrets: dict[str, str]
                     ) -> tuple[dict[str, str], set[str]]:
        """Environment the pattern gives each instance, and which of its names
        are secret (on Kubernetes they go to the Secret object)."""
        return {}, set()

    def instance_health(self, *, runtime, probe, age_s: float, deadline_s: float) -> Verdict:
        raise NotImplementedError

    def rollup(self, deployment, rows, *, unreachable: dict[str, str]) -> Verdict:
        raise NotImplementedError


def get_pattern(name: str) -> Pattern:
    """The pattern behaviour for ``Agent.pattern``; unknown names are a 422."""
    path = PATTERNS.get(name)
    if path is None:
        raise Unprocessable({"pattern": [f"Unknown pattern {name!r}."]})
    return _load(path)


_loaded: dict[str, Pattern] = {}


def _load(path: str) -> Pattern:
    if path not in _loaded:
        _loaded[path] = import_string(path)()
    return _loaded[path]

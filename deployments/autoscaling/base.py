"""The signal contract and the HPA-style decision."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar


class Signal:
    name: ClassVar[str] = ""
    needs_usage: ClassVar[bool] = False  # the pass must read CPU/memory per instance

    def value(self, row, deployment) -> float | None:
        """This replica's value (None: not measured)."""
        raise NotImplementedError


@dataclass(frozen=True)
class Decision:
    metric: float  # mean per ready replica
    recommendation: int
    desired: int
    history: list  # [(unix time, recommendation)] inside the scale-down window
    current: int  # replicas before the decision


def decide(*, values: list[float], ready: int, current: int, target: float,
           low: int | None, high: int | None, history: list, now: float,
           window_s: float) -> Decision:
    """Kubernetes' HPA rule: desired = ceil(ready × metric / target), within a
    10% tolerance, clamped to [low, high]; scaling down only to the highest
    recommendation of the stabilization window."""
    metric = sum(values) / len(values)
    ratio = metric / target
    recommendation = ready if abs(ratio - 1) <= 0.1 else math.ceil(ready * ratio)
    recommendation = max(low or 0, min(high or 1000, recommendation))
    history = [(t, r) for t, r in history if now - t <= window_s] + [(now, recommendation)]
    desired = current
    if recommendation > current:
        desired = recommendation
    elif recommendation < current:
        desired = max(r for _, r in history)
    return Decision(metric=metric, recommendation=recommendation, desired=desired,
                    history=history[-200:], current=current)

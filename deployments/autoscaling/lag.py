"""Scaling on stream lag, with KEDA's semantics over the HPA's.

The lag is Hangar's own reading of the broker (``streams.poll``: a
``StreamSample`` every polling interval); each new reading is one decision:

* desired = ceil(lag ÷ target per replica), clamped to min..max, within the
  HPA's 10 % tolerance of what runs (no change for a small drift);
* the activation threshold governs 0 ↔ 1 only: from zero, a lag strictly
  greater than it starts one replica (and the HPA's first step follows); at or
  below it, and idle for the cooldown, the deployment goes back to zero (when
  its minimum is 0);
* scale-down is stabilized as the HPA does: never below the highest
  recommendation of the last ``scale_down_window_s``;
* scale-up is limited per period as the HPA's defaults: 100 % or 4 replicas
  per 15 s, whichever is more;
* a reading that failed (broker unreachable) changes nothing: the replicas are
  held (KEDA's fallback), the idle clock restarts, and it is said once.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

from .base import Signal

TOLERANCE = 0.1
UP_PERIOD_S = 15.0
UP_PERCENT = 100
UP_PODS = 4


class LagSignal(Signal):
    """Measured at the source, not per replica (``from_source``)."""

    name: ClassVar[str] = "lag"
    from_source: ClassVar[bool] = True

    def value(self, row, deployment) -> float | None:
        return None


@dataclass(frozen=True)
class Policy:
    target: float
    low: int
    high: int
    activation: float = 0.0
    cooldown_s: float = 300.0
    window_s: float = 300.0


@dataclass(frozen=True)
class LagDecision:
    lag: int
    current: int
    desired: int
    recommendation: int
    why: str  # the rule that decided, for the timeline
    state: dict = field(default_factory=dict)  # the autoscaler's memory after it

    @property
    def metric(self) -> float:
        return float(self.lag)

    def message(self, target: float) -> str:
        """"lag 4,120 over 5 replicas × target 500 → 9 replicas" and why."""
        text = (f"lag {self.lag:,} over {self.current} replica{_s(self.current)} × target "
                f"{target:g} → {self.desired} replica{_s(self.desired)}")
        return f"{text} ({self.why})" if self.why else text


def _s(n: int) -> str:
    return "" if n == 1 else "s"


def decide(*, lag: int, current: int, policy: Policy, state: dict, now: float) -> LagDecision:
    p = policy
    history = [(t, r) for t, r in state.get("recommendations", []) if now - t <= p.window_s]
    ups = [(t, n) for t, n in state.get("ups", []) if now - t < UP_PERIOD_S]
    last_active = state.get("last_active", now)
    active = lag > p.activation
    if active:
        last_active = now
    floor = max(1, p.low)

    def done(desired: int, recommendation: int, why: str, history: list) -> LagDecision:
        new_ups = ups + ([(now, desired - current)] if desired > current else [])
        return LagDecision(lag=lag, current=current, desired=desired,
                           recommendation=recommendation, why=why,
                           state={"recommendations": history[-200:], "ups": new_ups,
                                  "last_active": last_active, "metric": lag})

    if not active and p.low == 0:
        if current == 0:
            return done(0, 0, f"lag not above activation {p.activation:g}", history)
        idle = now - last_active
        if idle >= p.cooldown_s:
            return done(0, 0, f"idle {idle:.0f} s ≥ cooldown {p.cooldown_s:g} s", history=[])
    base = current
    why = []
    if current == 0:  # activation: 0 → 1, and the HPA's first step from there
        base = 1
        why.append(f"activation: lag > {p.activation:g}")
    if base and abs(lag / (p.target * base) - 1) <= TOLERANCE:
        recommendation = base
    else:
        recommendation = math.ceil(lag / p.target)
    recommendation = max(floor, min(p.high, recommendation))
    history = history + [(now, recommendation)]
    desired = base
    if recommendation > base:
        added = sum(n for _, n in ups)
        start = max(0, current - added)
        limit = max(math.ceil(start * (1 + UP_PERCENT / 100)), start + UP_PODS, base)
        desired = min(recommendation, limit)
        if desired < recommendation:
            why.append(f"scale-up limited to {limit} per {UP_PERIOD_S:g} s")
    elif recommendation < base:
        desired = min(base, max(r for _, r in history))
        if desired > recommendation:
            why.append(f"stabilized: {desired} recommended within {p.window_s:g} s")
    desired = max(0, min(p.high, max(desired, p.low)))
    return done(desired, recommendation, "; ".join(why), history)

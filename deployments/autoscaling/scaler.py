"""Act on a signal: read the latest observations, decide, record the decision
and change replicas through the audited verb — outside the reconcile lock, so
a long pass (or a stuck one) never holds a scale decision back.

Before deciding, the pattern reads what it watches outside the runtime when a
reading is due (a stream's lag from its broker, ``Pattern.measure``); signals
measured at the source (``lag``) decide once per reading, with KEDA's rules
(``lag.decide``); the others per replica, with the HPA's (``base.decide``).
"""
from __future__ import annotations

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from .. import actions, events
from ..audit import Actor
from ..errors import DomainError
from ..models import (
    Deployment,
    DeploymentEvent,
    DeploymentState,
    Health,
    Instance,
    StreamSample,
)
from ..patterns import get_pattern
from ..runtimes import RuntimeFailure, get_driver
from . import get_signal
from .base import Decision, decide
from .lag import LagDecision, Policy
from .lag import decide as decide_on_lag

AUTOSCALER = Actor(user=None, source="autoscaler")


def autoscale(deployment_id: int) -> Decision | LagDecision | None:
    """One decision for the deployment, or None when it is not autoscaled
    here (manual, not active, no data, or a target that autoscales itself:
    then what its autoscaler set is followed, see ``_follow``)."""
    d = (Deployment.objects.select_related("agent", "version", "target")
         .filter(pk=deployment_id).first())
    if d is None:
        return None
    pattern = get_pattern(d.agent.pattern)
    pattern.measure(d)  # the broker is asked here, with no lock held
    follow = None
    with transaction.atomic():
        d = (Deployment.objects.select_for_update(of=("self",))
             .select_related("agent", "version", "target")
             .filter(pk=deployment_id).first())
        if d is None or d.state != DeploymentState.ACTIVE:
            return None
        signal = get_signal(pattern.autoscaling_signal(d))
        if signal is None:
            return None
        if _autoscales_itself(d, signal.name):
            follow = signal.name
        elif getattr(signal, "from_source", False):
            return _on_lag(d, pattern)
        else:
            return _on_replicas(d, signal)
    _follow(d, follow)  # the target is asked outside the row lock
    return None


def _on_replicas(d: Deployment, signal) -> Decision | None:
    if not d.autoscale_target:
        return None
    ready = [r for r in Instance.objects.filter(deployment=d, health=Health.HEALTHY)
             .select_related("version")]
    values = [v for v in (signal.value(r, d) for r in ready) if v is not None]
    if not values:
        return None
    decision = decide(values=values, ready=len(ready), current=d.replicas,
                      target=d.autoscale_target, low=d.autoscale_min, high=d.autoscale_max,
                      history=d.autoscale_state.get("recommendations", []),
                      now=timezone.now().timestamp(),
                      window_s=settings.HANGAR_AUTOSCALE_DOWN_WINDOW_S)
    _remember(d, {"recommendations": decision.history, "metric": decision.metric})
    if decision.desired != d.replicas:
        _act(d, decision.desired,
             f"{d.replicas}→{decision.desired}: {d.get_autoscale_signal_display()} "
             f"{decision.metric:.1f} per replica, target {d.autoscale_target:g}")
    return decision


def _follow(d: Deployment, signal: str | None) -> None:
    """A target that autoscales itself (an HPA, KEDA) decides the replicas:
    the deployment follows what it set (through the verb, audited with the
    autoscaler's name, on the timeline), so its page and health count the
    replicas that run."""
    if signal is None:
        return
    try:
        scaled = get_driver(d.target).scaled_replicas(d.pk, signal)
    except RuntimeFailure:
        return  # the pass says why the target cannot be reached
    if scaled is None or scaled.replicas == d.replicas:
        return
    message = f"{scaled.by}: {d.replicas} → {scaled.replicas} replicas"
    sample = (StreamSample.objects.filter(deployment=d).order_by("-at", "-pk").first()
              if signal == "lag" else None)
    if sample is not None and sample.lag is not None:
        message += f" (lag {sample.lag:,} at Hangar's last reading)"
    _act(d, scaled.replicas, message, actor=Actor(user=None, source=scaled.by))


def lag_policy(d: Deployment, stream_settings) -> Policy:
    """The deployment's own bounds and target when set, else its version's."""
    s = stream_settings
    low = d.autoscale_min if d.autoscale_min is not None else s.min_replicas
    high = d.autoscale_max if d.autoscale_max is not None else s.max_replicas
    return Policy(target=d.autoscale_target or s.lag_target or 1.0, low=low,
                  high=max(low, high), activation=s.activation_lag,
                  cooldown_s=s.cooldown_s, window_s=s.scale_down_window_s)


def _on_lag(d: Deployment, pattern) -> LagDecision | None:
    sample = StreamSample.objects.filter(deployment=d).order_by("-at", "-pk").first()
    state = dict((d.autoscale_state or {}).get("lag") or {})
    if sample is None or state.get("sample") == sample.pk:
        return None  # one decision per reading
    policy = lag_policy(d, pattern.settings(d.version))
    now = sample.at.timestamp()
    if sample.error or sample.lag is None:
        # KEDA's fallback: hold what runs, restart the idle clock, say it once.
        message = (f"lag unknown, holding {d.replicas} replica{'' if d.replicas == 1 else 's'}: "
                   f"{sample.error}")
        if state.get("held") != sample.error:
            _event(d, "AutoscaleHeld", message, warning=True)
        state.update(sample=sample.pk, held=sample.error, last_active=now)
        _remember(d, {"lag": state})
        return LagDecision(lag=-1, current=d.replicas, desired=d.replicas,
                           recommendation=d.replicas, why="broker unreachable", state=state)
    decision = decide_on_lag(lag=sample.lag, current=d.replicas, policy=policy,
                             state=state, now=now)
    _remember(d, {"lag": {**decision.state, "sample": sample.pk, "held": ""}})
    if decision.desired != d.replicas:
        _act(d, decision.desired, decision.message(policy.target))
    return decision


def _remember(d: Deployment, changes: dict) -> None:
    d.autoscale_state = {**(d.autoscale_state or {}), **changes}
    Deployment.objects.filter(pk=d.pk).update(autoscale_state=d.autoscale_state)


def _act(d: Deployment, desired: int, message: str, *, actor: Actor = AUTOSCALER) -> None:
    try:
        with transaction.atomic():
            actions.update_deployment(d, replicas=desired, actor=actor)
    except DomainError as exc:
        # A tightened policy stops the way up; the deployment keeps its
        # replicas and the timeline says why, once per distinct refusal.
        message = f"{message} refused: {exc}"
        last = d.events.order_by("-id").values_list("reason", "message").first()
        if last == ("AutoscaleRefused", message):
            return
        _event(d, "AutoscaleRefused", message, warning=True)
    else:
        _event(d, "Autoscaled", message)


def _event(d: Deployment, reason: str, message: str, *, warning: bool = False) -> None:
    event = DeploymentEvent.objects.create(
        deployment=d, reason=reason, message=message[:1000],
        type=DeploymentEvent.Type.WARNING if warning else DeploymentEvent.Type.NORMAL)
    # publish() waits for the commit itself.
    events.publish(d.agent.team_id, events.Timeline.of(event), deployment_id=d.pk)


def _autoscales_itself(deployment: Deployment, signal: str) -> bool:
    """A target that scales on ``signal`` itself gets the policy in its spec
    (an HPA; KEDA's ScaledObject for the lag) and Hangar does not act: one
    autoscaler per deployment, never two. An unusable target: nothing to do."""
    try:
        return get_driver(deployment.target).autoscales(signal)
    except RuntimeFailure:
        return True

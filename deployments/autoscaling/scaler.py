"""Act on a signal: read the latest observations, decide, record the decision
and change replicas through the audited verb — outside the reconcile lock, so
a long pass (or a stuck one) never holds a scale decision back."""
from __future__ import annotations

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from .. import actions, events
from ..audit import Actor
from ..errors import DomainError
from ..models import Deployment, DeploymentEvent, DeploymentState, Health, Instance
from ..patterns import get_pattern
from ..runtimes import RuntimeFailure, get_driver
from . import get_signal
from .base import Decision, decide

AUTOSCALER = Actor(user=None, source="autoscaler")


def autoscale(deployment_id: int) -> Decision | None:
    """One decision for the deployment, or None when it is not autoscaled
    here (manual, not active, a driver that autoscales itself, no data)."""
    with transaction.atomic():
        d = (Deployment.objects.select_for_update(of=("self",))
             .select_related("agent", "version", "target")
             .filter(pk=deployment_id).first())
        if d is None or d.state != DeploymentState.ACTIVE or not d.autoscale_target:
            return None
        signal = get_signal(get_pattern(d.agent.pattern).autoscaling_signal(d))
        if signal is None or _autoscales_itself(d):
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
        Deployment.objects.filter(pk=d.pk).update(
            autoscale_state={"recommendations": decision.history, "metric": decision.metric})
        if decision.desired != d.replicas:
            message = (f"{d.replicas}→{decision.desired}: {d.get_autoscale_signal_display()} "
                       f"{decision.metric:.1f} per replica, target {d.autoscale_target:g}")
            try:
                with transaction.atomic():
                    actions.update_deployment(d, replicas=decision.desired, actor=AUTOSCALER)
            except DomainError as exc:
                # A tightened policy stops the way up; the deployment keeps its
                # replicas and the timeline says why, once per distinct refusal.
                message = f"{message} refused: {exc}"
                last = d.events.order_by("-id").values_list("reason", "message").first()
                if last == ("AutoscaleRefused", message):
                    return decision
                event = DeploymentEvent.objects.create(
                    deployment=d, reason="AutoscaleRefused", message=message,
                    type=DeploymentEvent.Type.WARNING)
            else:
                event = DeploymentEvent.objects.create(deployment=d, reason="Autoscaled",
                                                       message=message)
            # publish() waits for the commit itself.
            events.publish(d.agent.team_id, events.Timeline.of(event), deployment_id=d.pk)
        return decision


def _autoscales_itself(deployment: Deployment) -> bool:
    """Drivers that manage replicas get the policy (an HPA) in their spec."""
    try:
        return get_driver(deployment.target).features.manages_replicas
    except RuntimeFailure:
        return True

"""The rollout's transitions (abort, complete, blue-green promotion, next
step) and what every transition does besides: its message, its timeline
entry, and after commit a reconcile, a live event and the next advance. The
state machine (``advance``) and the verbs (``actions``) both call these."""
from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from deployments import audit, effects
from deployments import events as live
from deployments.actions import schedule_reconcile
from deployments.audit import Actor
from deployments.models import Deployment, DeploymentEvent

from . import notify
from .events import changed
from .models import Phase, Rollout, Strategy
from .steps import describe

ROLLOUTS = Actor(user=None, source="rollouts")


def abort(rollout: Rollout, d: Deployment, actor: Actor, reason: str) -> None:
    rollout.aborted = True
    rollout.phase = Phase.DEGRADED
    rollout.finished_at = timezone.now()
    rollout.pause_until = None
    rollout.weight = 0
    rollout.message = reason[:500]
    timeline(d, "RolloutAborted", f"rollout {rollout.number}: {reason}", warning=True)
    audit.record(actor, "rollout.abort", rollout, team_id=d.agent.team_id,
                 after={"reason": reason, "number": rollout.number})
    notify.send(d, rollout, "rollout.aborted", reason)


def complete(rollout: Rollout, d: Deployment, actor: Actor, why: str) -> None:
    rollout.weight = 100
    rollout.phase = Phase.HEALTHY
    rollout.finished_at = timezone.now()
    rollout.pause_until = None
    rollout.message = (f"promoted: revision {rollout.canary_revision.number} is stable "
                       f"({why})")
    timeline(d, "RolloutPromoted", f"rollout {rollout.number} {rollout.message}")
    audit.record(actor, "rollout.complete", rollout, team_id=d.agent.team_id,
                 after={"number": rollout.number, "why": why})
    notify.send(d, rollout, "rollout.promoted", rollout.message)


def promote_blue_green(rollout: Rollout, d: Deployment, actor: Actor, why: str) -> None:
    now = timezone.now()
    rollout.promoted_at = now
    rollout.scale_down_at = now + timedelta(seconds=rollout.scale_down_delay_s)
    complete(rollout, d, actor, why)
    rollout.message += f"; revision {rollout.stable_revision.number} kept " \
                       f"{rollout.scale_down_delay_s}s"



def next_step(rollout: Rollout, now) -> None:
    rollout.step_index += 1
    rollout.phase = Phase.PROGRESSING
    rollout.pause_until = None
    rollout.step_started_at = now
    describe_now(rollout)


def describe_now(rollout: Rollout, *, waiting: bool = False) -> None:
    if rollout.strategy == Strategy.BLUE_GREEN:
        if waiting:
            rollout.message = (f"starting the preview of revision "
                               f"{rollout.canary_revision.number}")
        elif rollout.phase == Phase.PAUSED:
            rollout.message = "preview ready; waiting for promotion"
        elif rollout.auto_promote_s is not None:
            rollout.message = f"preview ready; auto-promote after {rollout.auto_promote_s}s"
        else:
            rollout.message = "preview ready; pre-promotion analysis"
        return
    step = rollout.current_step
    where = f"step {rollout.step_index + 1} of {len(rollout.steps)}"
    if step is None:
        rollout.message = f"canary at {rollout.weight}%: steps done"
        return
    text = describe(step)
    if waiting:
        text += ", waiting for canary replicas"
    if rollout.phase == Phase.PAUSED and rollout.pause_until is not None:
        text += f" (until {rollout.pause_until:%H:%M:%S})"
    rollout.message = f"canary at {rollout.weight}% ({where}: {text})"[:500]


def timeline(d: Deployment, reason: str, message: str, *, warning: bool = False) -> None:
    entry = DeploymentEvent.objects.create(deployment=d, reason=reason[:32],
                                           message=message[:1000],
                                           type="Warning" if warning else "Normal")
    live.publish(d.agent.team_id, live.Timeline.of(entry), deployment_id=d.pk)


def after_commit(rollout: Rollout) -> None:
    schedule_reconcile(rollout.deployment_id)
    changed(rollout)
    effects.enqueue_on_commit("rollouts.tasks.advance", rollout.deployment_id,
                              countdown=0.2)
    if rollout.phase == Phase.PAUSED and rollout.pause_until is not None \
            and not rollout.finished:
        # A timed pause ends on time, not at the next tick.
        left = (rollout.pause_until - timezone.now()).total_seconds()
        effects.enqueue_on_commit("rollouts.tasks.advance", rollout.deployment_id,
                                  countdown=max(0.2, left))


def tick_s() -> float:
    return float(getattr(settings, "HANGAR_ROLLOUT_TICK_S", 2.0))

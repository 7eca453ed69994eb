"""Verbs: set a deployment's rollout strategy; promote, promote full, abort,
retry a rollout; undo to a revision; team hooks. Each atomic, audited, with
its reconcile, live event and notifications after commit. Role checks happen
in the caller (``deployments.access``) before a verb is called."""
from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from deployments import actions as registry
from deployments import audit
from deployments.audit import Actor
from deployments.errors import Conflict, Invalid
from deployments.models import Deployment, Team

from . import steps, transitions
from .models import Hook, HookFormat, Phase, Rollout, RolloutPolicy, Strategy

ROLLING = ("rolling", "recreate")


@transaction.atomic
def set_strategy(deployment: Deployment, *, actor: Actor, strategy: str,
                 steps_: list | None = None, analysis: dict | None = None,
                 auto_promote_s: int | None = None, scale_down_delay_s: int = 30
                 ) -> RolloutPolicy | None:
    """``canary`` (with steps and an optional background analysis),
    ``blue_green`` (optional pre-promotion analysis, auto-promote, scale-down
    delay), or back to ``rolling``/``recreate`` (the policy goes; a rollout
    under way carries on until it ends)."""
    d = Deployment.objects.select_for_update(of=("self",)).select_related("agent").get(
        pk=deployment.pk)
    policy = RolloutPolicy.objects.filter(deployment=d).first()
    before = audit.snapshot(policy)
    if strategy in ROLLING:
        if policy is not None:
            policy.delete()
        if d.rollout_strategy != strategy:
            registry.update_deployment(d, actor=actor, rollout_strategy=strategy)
        audit.record(actor, "rollout.strategy", d, before=before,
                     after={"strategy": strategy})
        return None
    if strategy not in Strategy.values:
        raise Invalid({"strategy": [f"unknown strategy {strategy!r}; one of rolling, "
                                    "recreate, canary, blue_green"]})
    if strategy == Strategy.CANARY:
        checked_steps = steps.canary_steps(steps_)
        if auto_promote_s is not None:
            raise Invalid({"auto_promote_s": ["only for blue_green"]})
    else:
        if steps_:
            raise Invalid({"steps": ["blue_green has no steps (promote switches all traffic)"]})
        checked_steps = []
    checked_analysis = steps.analysis(analysis, "analysis") if analysis else {}
    if not 0 <= scale_down_delay_s <= 86400:
        raise Invalid({"scale_down_delay_s": ["must be from 0 to 86400 seconds"]})
    policy = policy or RolloutPolicy(deployment=d)
    policy.strategy = strategy
    policy.steps = checked_steps
    policy.analysis = checked_analysis
    policy.auto_promote_s = auto_promote_s
    policy.scale_down_delay_s = scale_down_delay_s
    registry.validated_save(policy)
    audit.record(actor, "rollout.strategy", d, before=before, after=audit.snapshot(policy))
    return policy


def _active(deployment: Deployment) -> Rollout:
    rollout = (Rollout.objects.select_for_update(of=("self",))
               .select_related("deployment__agent__team", "stable_revision", "canary_revision")
               .filter(deployment_id=deployment.pk).order_by("-number").first())
    if rollout is None:
        raise Conflict(f"{deployment.name} has no rollout.")
    return rollout


def _under_way(deployment: Deployment) -> Rollout:
    rollout = _active(deployment)
    if rollout.finished:
        raise Conflict(f"{deployment.name} has no rollout under way (rollout "
                       f"{rollout.number} is {rollout.phase.lower()}: {rollout.message}).")
    return rollout


def _done(rollout: Rollout, actor: Actor, action: str, before: dict) -> Rollout:
    rollout.save()
    audit.record(actor, action, rollout, team_id=rollout.deployment.agent.team_id,
                 before=before, after=audit.snapshot(rollout))
    transitions.after_commit(rollout)
    return rollout


@transaction.atomic
def promote(deployment: Deployment, *, actor: Actor, full: bool = False) -> Rollout:
    """Canary: skip the current step (a pause, an analysis, an inconclusive
    pause), or with ``full`` go to 100 % now. Blue-green: switch all traffic."""
    rollout = _under_way(deployment)
    before = audit.snapshot(rollout)
    d = rollout.deployment
    who = actor.label
    if rollout.strategy == Strategy.BLUE_GREEN:
        transitions.promote_blue_green(rollout, d, actor, f"promoted by {who}")
    elif full:
        transitions.complete(rollout, d, actor, f"promoted to 100% by {who}")
    else:
        transitions.next_step(rollout, timezone.now())
        transitions.timeline(d, "RolloutPromote", f"rollout {rollout.number}: {who} promoted "
                             f"to the next step ({rollout.message})")
        if rollout.phase == Phase.PAUSED:
            rollout.phase = Phase.PROGRESSING
    return _done(rollout, actor, "rollout.promote_full" if full else "rollout.promote", before)


@transaction.atomic
def abort(deployment: Deployment, *, actor: Actor) -> Rollout:
    """All traffic back to stable, the canary (or preview) scaled down; the
    deployment Degraded until a retry or a new revision. A blue-green rollout
    may be aborted during its scale-down delay (the switch back is instant)."""
    rollout = _active(deployment)
    in_delay = rollout.scale_down_at is not None and \
        rollout.scale_down_at > timezone.now() and not rollout.aborted
    if rollout.finished and not in_delay:
        raise Conflict(f"{deployment.name} has no rollout under way (rollout "
                       f"{rollout.number} is {rollout.phase.lower()}).")
    before = audit.snapshot(rollout)
    rollout.scale_down_at = None
    rollout.promoted_at = None
    transitions.abort(rollout, rollout.deployment, actor, f"rollout aborted by {actor.label}")
    return _done(rollout, actor, "rollout.abort_request", before)


@transaction.atomic
def retry(deployment: Deployment, *, actor: Actor) -> Rollout:
    """Start an aborted rollout again from its first step."""
    rollout = _active(deployment)
    if not rollout.aborted:
        raise Conflict(f"rollout {rollout.number} of {deployment.name} was not aborted; "
                       "only an aborted rollout can be retried.")
    if rollout.canary_revision_id != rollout.deployment.revision_id:
        raise Conflict(f"rollout {rollout.number} was superseded by a newer revision.")
    before = audit.snapshot(rollout)
    rollout.aborted = False
    rollout.finished_at = None
    rollout.phase = Phase.PROGRESSING
    rollout.step_index = 0
    rollout.weight = 0
    rollout.analysis_state = {}
    rollout.promoted_at = rollout.scale_down_at = None
    transitions.describe_now(rollout)
    transitions.timeline(rollout.deployment, "RolloutRetry",
                         f"rollout {rollout.number} retried by {actor.label}")
    return _done(rollout, actor, "rollout.retry", before)


def undo(deployment: Deployment, *, actor: Actor, revision: int | None = None) -> Deployment:
    """Roll back to revision ``revision`` (default: the one before): a new
    revision of its spec; to the stable revision it is immediate (no steps),
    to anything else it is rolled out by the strategy like any new revision."""
    with transaction.atomic():
        d = registry.rollback_deployment(deployment, actor=actor, revision=revision)
        audit.record(actor, "rollout.undo", d, after={"revision": revision,
                                                     "now": d.revision.number})
    return d


@transaction.atomic
def create_hook(team: Team, *, actor: Actor, name: str, url: str,
                format: str = HookFormat.GENERIC, events: list[str] | None = None) -> Hook:
    from .models import EVENT_NAMES
    unknown = sorted(set(events or ()) - set(EVENT_NAMES))
    if unknown:
        raise Invalid({"events": [f"unknown event(s): {', '.join(unknown)}; one of "
                                  f"{', '.join(EVENT_NAMES)}"]})
    hook = Hook(team=team, name=name, url=url, format=format, events=list(events or ()))
    registry.validated_save(hook, conflict=f"The team already has a hook named {name!r}.")
    audit.record(actor, "rollout_hook.create", hook, after=audit.snapshot(hook))
    return hook


@transaction.atomic
def delete_hook(hook: Hook, *, actor: Actor) -> None:
    audit.record(actor, "rollout_hook.delete", hook, before=audit.snapshot(hook))
    hook.delete()

"""The rollout state machine, and what it tells the reconciler and the gateway.

Level-triggered like the reconciler: ``split_for`` (called by every reconcile
pass through ``deployments.traffic``) starts a rollout when the deployment's
current revision is not the one its latest rollout moves to and the
deployment has a policy and instances of another revision; ``advance``
(a Celery tick every ``HANGAR_ROLLOUT_TICK_S`` and after every verb) carries
out steps, takes analysis measurements when due, and aborts, pauses or
completes. Each transition is written under the rollout's row lock, audited
(actor ``rollouts``), put on the deployment's timeline, notified to the
team's hooks, and followed after commit by a reconcile and a live event (the
gateway reloads its weights).

The modules: ``plan`` (the split and the weights a rollout wants),
``advance`` (the state machine), ``transitions`` (what each transition
writes and sends); this one starts rollouts and answers the reconciler.
"""
from __future__ import annotations

from collections import Counter

from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from deployments import audit
from deployments.models import Deployment, Health, Instance, JobRun, Revision
from deployments.traffic import Split

from . import notify
from .advance import advance, advance_all
from .events import changed
from .models import Rollout, RolloutPolicy
from .plan import canary_replicas, due_in, latest, realtime, wanted, weights
from .transitions import (
    ROLLOUTS,
    abort,
    after_commit,
    complete,
    describe_now,
    promote_blue_green,
    tick_s,
    timeline,
)

__all__ = [
    "ROLLOUTS", "abort", "advance", "advance_all", "canary_replicas", "complete", "due_in",
    "latest",
    "promote_blue_green", "realtime", "split_for", "start", "tick_s", "wanted", "weights",
]


def split_for(deployment: Deployment, desired: int) -> Split | None:
    """The reconciler's question (``deployments.traffic``): what to run now."""
    rollout = latest(deployment.pk)
    if rollout is None or rollout.canary_revision_id != deployment.revision_id:
        policy = RolloutPolicy.objects.filter(deployment_id=deployment.pk).first()
        if policy is None and (rollout is None or rollout.finished):
            return None
        rollout = start(deployment, policy, rollout)
        if rollout is None:
            return None
    return wanted(rollout, deployment, desired)


def _stable_of(deployment: Deployment, previous: Rollout | None) -> Revision | None:
    """What the new revision is measured against and falls back to: the
    revision most of the deployment's instances run (healthy ones first);
    with none running, the previous rollout's."""
    rows = Instance.objects.filter(deployment_id=deployment.pk).exclude(
        revision_id=deployment.revision_id).exclude(revision__isnull=True)
    if previous is not None and (not previous.finished or previous.aborted) \
            and previous.stable_revision_id \
            and rows.filter(revision_id=previous.stable_revision_id).exists():
        return previous.stable_revision  # a rollout cut short: its stable still runs
    counts = Counter((health == Health.HEALTHY, revision_id)
                     for revision_id, health in rows.values_list("revision_id", "health"))
    if counts:
        (_, revision_id), _ = max(counts.items(), key=lambda item: (item[0][0], item[1]))
        return Revision.objects.filter(pk=revision_id).first()
    # No instances (batch): the revision the latest job run ran.
    ran = (JobRun.objects.filter(deployment_id=deployment.pk, revision__isnull=False)
           .exclude(revision_id=deployment.revision_id).order_by("-pk")
           .values_list("revision_id", flat=True).first())
    if ran is not None and (previous is None or previous.finished):
        return Revision.objects.filter(pk=ran).first()
    if previous is None:
        return None
    if previous.finished and not previous.aborted and previous.canary_revision_id:
        return previous.canary_revision
    return previous.stable_revision


def start(deployment: Deployment, policy: RolloutPolicy | None,
          previous: Rollout | None) -> Rollout | None:
    """A rollout to the deployment's current revision (None when there is
    nothing to move from, or the new revision runs what stable runs: an undo
    to stable is immediate, no steps)."""
    with transaction.atomic():
        # Lock the row alone, then read it with its relations: a FOR UPDATE with
        # joins re-checks a concurrently updated row against the joined rows it
        # read before (the old revision) and finds nothing.
        if not list(Deployment.objects.select_for_update().filter(pk=deployment.pk)
                    .values_list("pk", flat=True)):
            return None
        d = Deployment.objects.select_related("agent__team", "revision", "version").get(
            pk=deployment.pk)
        again = latest(d.pk)
        if again is not None and again.canary_revision_id == d.revision_id:
            return again  # another pass started it meanwhile
        cut_short = again is not None and (not again.finished or again.aborted)
        if cut_short and again.stable_revision_id \
                and again.stable_revision.digest == d.revision.digest:
            # Undone to what stable runs (its instances are the new revision's now):
            # nothing to roll out, no steps.
            again.aborted = False
            again.finished_at = again.finished_at or timezone.now()
            again.message = (f"{again.message}; undone: revision {d.revision.number} runs "
                             f"what stable revision {again.stable_revision.number} runs")[:500]
            again.save(update_fields=["aborted", "finished_at", "message", "updated_at"])
            timeline(d, "RolloutUndone", f"rollout {again.number}: {again.message}")
            changed(again)
            return None
        stable = _stable_of(d, again)
        if again is not None and not again.finished:
            again.finished_at = timezone.now()
            again.message = f"superseded by revision {d.revision.number}"
            again.save(update_fields=["finished_at", "message", "updated_at"])
        if policy is None or stable is None or stable.digest == d.revision.digest:
            return None
        number = (d.rollouts.aggregate(n=Max("number"))["n"] or 0) + 1
        rollout = Rollout.objects.create(
            deployment=d, number=number, strategy=policy.strategy, steps=policy.steps,
            analysis=policy.analysis, auto_promote_s=policy.auto_promote_s,
            scale_down_delay_s=policy.scale_down_delay_s, stable_revision=stable,
            canary_revision=d.revision, step_started_at=timezone.now(),
            message="starting")
        rollout.deployment = d
        describe_now(rollout)
        rollout.save(update_fields=["message"])
        text = (f"rollout {number} started: revision {stable.number} → "
                f"{d.revision.number} ({rollout.get_strategy_display().lower()})")
        timeline(d, "RolloutStarted", text)
        audit.record(ROLLOUTS, "rollout.start", rollout, team_id=d.agent.team_id,
                     after=audit.snapshot(rollout))
        notify.send(d, rollout, "rollout.started", text)
        after_commit(rollout)
        return rollout

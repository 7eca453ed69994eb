"""What a rollout wants now: the reconciler's split of replicas between the
stable and the canary (or preview) revision, and the gateway's weights.

Replicas during a canary: with the gateway in front (real-time), the stable
revision keeps all its replicas until the end (an abort is instant) and the
canary gets ⌈replicas × weight⌉ (at least one), while the gateway splits the
requests exactly by weight. Without it (batch, stream), the replicas are
split by the weight — an approximation of the weight by replica proportion.
"""
from __future__ import annotations

import math
from datetime import timedelta

from django.db.models import Q
from django.utils import timezone

from deployments.models import Deployment, Health, Revision
from deployments.patterns import get_pattern
from deployments.traffic import Split

from .models import Phase, Rollout, Strategy


def latest(deployment_id: int) -> Rollout | None:
    return Rollout.objects.filter(deployment_id=deployment_id).order_by("-number").first()


def realtime(deployment: Deployment) -> bool:
    return get_pattern(deployment.agent.pattern).gateway(deployment.version) is not None


def canary_replicas(deployment: Deployment, desired: int, weight: int) -> tuple[int, int]:
    """(canary, stable) replicas at ``weight`` percent (none of either for a
    deployment that runs none, e.g. batch: its job runs split, ``job_revision``)."""
    if weight <= 0 or desired <= 0:
        return 0, desired
    if realtime(deployment):
        return max(1, math.ceil(desired * weight / 100)), (desired if weight < 100 else
                                                            desired)
    canary = max(1, round(desired * weight / 100))
    return canary, max(0, desired - canary)


def wanted(rollout: Rollout, deployment: Deployment, desired: int) -> Split | None:
    """The split ``rollout`` wants now (None: it is done; converge as usual)."""
    now = timezone.now()
    stable = rollout.stable_revision_id
    if stable is None:
        return None
    if rollout.aborted:
        return Split(current=0, others={stable: desired}, health=Health.DEGRADED,
                     reason=rollout.message, active=stable)
    if rollout.finished:
        if rollout.scale_down_at and now < rollout.scale_down_at:
            left = (rollout.scale_down_at - now).total_seconds()
            return Split(current=desired, others={stable: desired}, requeue_in=left + 0.5,
                         reason=f"blue-green: revision {_number(rollout.stable_revision_id)} "
                                f"kept {left:.0f}s more (scale-down delay)",
                         active=rollout.canary_revision_id)
        return None
    word = Health.SUSPENDED if rollout.phase == Phase.PAUSED else Health.PROGRESSING
    if rollout.strategy == Strategy.BLUE_GREEN:
        return Split(current=desired, others={stable: desired}, health=word,
                     reason=f"rollout {rollout.number}: {rollout.message}", requeue_in=2,
                     active=stable, preview=rollout.canary_revision_id)
    canary, kept = canary_replicas(deployment, desired, rollout.weight)
    # With the gateway in front it splits exactly and a Service (in-cluster
    # callers) stays on stable until 100 %; without it, the replicas split.
    active = None
    if realtime(deployment):
        active = stable if rollout.weight < 100 else rollout.canary_revision_id
        # The replicas the next weight needs start while this step runs (a pause,
        # an analysis): they get no more than the weight's share of requests
        # (the gateway splits by revision), and the next step need not wait.
        ahead = next_weight(rollout)
        if ahead is not None:
            canary = max(canary, canary_replicas(deployment, desired, ahead)[0])
    return Split(current=canary, others={stable: kept}, health=word,
                 reason=f"rollout {rollout.number}: {rollout.message}", requeue_in=2,
                 active=active)


GOLDEN = (5 ** 0.5 - 1) / 2


def job_revision(deployment: Deployment, run_id: int) -> int | None:
    """The revision a job run runs (``deployments.traffic.job_revision``):
    during a canary the new one for ``weight`` % of the runs — run ids spread
    by the golden ratio, so any stretch of consecutive runs splits close to the
    weight, and a higher weight keeps every run a lower one sent to the canary;
    stable before a blue-green promotion and after an abort. An approximation
    by count of runs, as replicas are for streams (README)."""
    rollout = latest(deployment.pk)
    if rollout is None or rollout.stable_revision_id is None \
            or rollout.canary_revision_id != deployment.revision_id:
        return None
    if rollout.aborted:
        return rollout.stable_revision_id
    if rollout.finished:
        return None
    if rollout.strategy == Strategy.BLUE_GREEN:
        return rollout.stable_revision_id
    canary = (run_id * GOLDEN) % 1 < rollout.weight / 100
    return rollout.canary_revision_id if canary else rollout.stable_revision_id


def next_weight(rollout: Rollout) -> int | None:
    """The weight of the first ``set_weight`` from the current step on."""
    for step in rollout.steps[rollout.step_index:]:
        if "set_weight" in step:
            return step["set_weight"]
    return None


def due_in(deployment_id: int) -> float | None:
    """Seconds until the deployment's rollout has something to do at a known
    time (a timed pause ends), for whoever runs ``advance``; None: nothing timed."""
    rollout = Rollout.objects.filter(deployment_id=deployment_id, finished_at__isnull=True,
                                     pause_until__isnull=False).order_by("-number").first()
    if rollout is None:
        return None
    return max(0.0, (rollout.pause_until - timezone.now()).total_seconds())


def _number(revision_id: int | None) -> str:
    if revision_id is None:
        return "?"
    return str(Revision.objects.filter(pk=revision_id).values_list("number", flat=True)
               .first() or "?")



def weights() -> dict[int, tuple[dict[int, int], int | None]]:
    """What the gateway splits by: deployment id → ({revision id: weight},
    preview revision id). Deployments absent: every ready replica serves."""
    now = timezone.now()
    # A finished rollout keeps all traffic on its revision a while longer, so the
    # old replicas get none while the reconciler removes them.
    grace = now - timedelta(seconds=60)
    out: dict[int, tuple[dict[int, int], int | None]] = {}
    for r in (Rollout.objects.filter(Q(finished_at__isnull=True) | Q(aborted=True)
                                     | Q(finished_at__gt=grace) | Q(scale_down_at__gt=grace))
              .order_by("deployment_id", "-number")
              .only("deployment_id", "number", "strategy", "phase", "stable_revision_id",
                    "canary_revision_id", "weight", "aborted", "finished_at",
                    "promoted_at", "scale_down_at")):
        if r.deployment_id in out or r.stable_revision_id is None:
            continue
        if r.aborted:
            out[r.deployment_id] = ({r.stable_revision_id: 100}, None)
        elif r.finished_at is not None:
            if r.phase == Phase.HEALTHY and r.canary_revision_id is not None:
                out[r.deployment_id] = ({r.canary_revision_id: 100}, None)
        elif r.strategy == Strategy.BLUE_GREEN:
            out[r.deployment_id] = ({r.stable_revision_id: 100}, r.canary_revision_id)
        else:
            out[r.deployment_id] = ({r.stable_revision_id: 100 - r.weight,
                                     r.canary_revision_id: r.weight}, None)
    return out

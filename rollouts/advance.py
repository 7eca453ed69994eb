"""Advancing a rollout: ``advance`` (a Celery tick every
``HANGAR_ROLLOUT_TICK_S`` and after every verb) carries out steps, takes
analysis measurements when due, and aborts, pauses or completes, under the
rollout's row lock."""
from __future__ import annotations

import logging
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from deployments.models import Deployment, Health, Instance, JobRun
from deployments.patterns import get_pattern

from . import analysis, notify
from .models import Measurement, Phase, Rollout, Strategy, Verdict
from .plan import wanted
from .transitions import (
    ROLLOUTS,
    abort,
    after_commit,
    complete,
    describe_now,
    next_step,
    promote_blue_green,
    timeline,
)

log = logging.getLogger(__name__)


def advance_all() -> int:
    """Advance every rollout that is under way; how many."""
    ids = list(Rollout.objects.filter(finished_at__isnull=True)
               .values_list("deployment_id", flat=True).distinct())
    for deployment_id in ids:
        try:
            advance(deployment_id)
        except Exception:  # noqa: BLE001 - one broken rollout must not stop the others
            log.exception("rollouts: advancing deployment %s failed", deployment_id)
    return len(ids)


def advance(deployment_id: int) -> Rollout | None:
    """Carry the deployment's rollout as far as it can go now."""
    with transaction.atomic():
        rollout = (Rollout.objects.select_for_update(of=("self",))
                   .select_related("deployment__agent__team", "deployment__version",
                                   "stable_revision", "canary_revision")
                   .filter(deployment_id=deployment_id).order_by("-number").first())
        if rollout is None or rollout.finished:
            return rollout
        d = rollout.deployment
        if rollout.canary_revision_id != d.revision_id:
            return rollout  # the next reconcile pass supersedes it
        before = (rollout.phase, rollout.step_index, rollout.weight, rollout.message)
        _remember_instances(rollout)
        for _ in range(2 * len(rollout.steps) + 4):
            if not _step(rollout, d):
                break
        if (rollout.phase, rollout.step_index, rollout.weight, rollout.message) != before:
            rollout.save()
            after_commit(rollout)
        else:
            rollout.save(update_fields=["instances", "analysis_state", "updated_at"])
        return rollout


def _step(rollout: Rollout, d: Deployment) -> bool:
    """One move of the state machine; True when it may move again at once."""
    now = timezone.now()
    if rollout.finished:
        return False
    if rollout.phase == Phase.PAUSED:
        if rollout.pause_until is not None and now >= rollout.pause_until:
            next_step(rollout, now)
            return True
        return False
    if rollout.analysis and _background_due(rollout):
        if not _measure(rollout, d, "background", rollout.analysis, now, background=True):
            return False
    if rollout.strategy == Strategy.BLUE_GREEN:
        return _blue_green(rollout, d, now)
    step = rollout.current_step
    if step is None:
        complete(rollout, d, ROLLOUTS, "all steps passed")
        return False
    (kind, value), = step.items()
    if kind == "set_weight":
        if rollout.weight != value:
            rollout.weight = value
            describe_now(rollout, waiting=True)
            timeline(d, "RolloutWeight", f"rollout {rollout.number}: canary revision "
                     f"{rollout.canary_revision.number} at {value}%")
        # Replicas started ahead (plan.wanted) let the step pass at once; else
        # the reconciler makes them first.
        if not _canary_ready(rollout, d):
            describe_now(rollout, waiting=True)
            return False
        next_step(rollout, now)
        return True
    if kind == "pause":
        duration = value.get("duration_s")
        rollout.phase = Phase.PAUSED
        if duration:
            rollout.pause_until = now + timedelta(seconds=duration)
            describe_now(rollout)
        else:
            rollout.pause_until = None
            describe_now(rollout)
            text = f"rollout {rollout.number} paused at {rollout.weight}%: waiting for promotion"
            timeline(d, "RolloutPaused", text)
            notify.send(d, rollout, "rollout.paused", text)
        return False
    # analysis
    key = f"step:{rollout.step_index}"
    state = rollout.analysis_state.get(key, {})
    if state.get("next_at", 0) > now.timestamp():
        return False
    if not _measure(rollout, d, key, value, now):
        return False
    state = rollout.analysis_state.get(key, {})
    if state.get("taken", 0) >= value["count"]:
        next_step(rollout, now)
        return True
    return False


def _blue_green(rollout: Rollout, d: Deployment, now) -> bool:
    if not _canary_ready(rollout, d):
        describe_now(rollout, waiting=True)
        return False
    ready_at = rollout.analysis_state.get("preview_ready_at")
    if ready_at is None:
        rollout.analysis_state["preview_ready_at"] = now.timestamp()
        text = (f"rollout {rollout.number}: revision {rollout.canary_revision.number} ready "
                f"on the preview URL")
        timeline(d, "RolloutPreview", text)
        ready_at = now.timestamp()
    template = rollout.analysis
    if template:
        state = rollout.analysis_state.get("prepromotion", {})
        if state.get("taken", 0) < template["count"]:
            if state.get("next_at", 0) <= now.timestamp():
                _measure(rollout, d, "prepromotion", template, now)
            if rollout.finished or rollout.phase == Phase.PAUSED:
                return False
            state = rollout.analysis_state.get("prepromotion", {})
            if state.get("taken", 0) < template["count"]:
                describe_now(rollout)
                return False
    if rollout.auto_promote_s is not None:
        if now.timestamp() >= ready_at + rollout.auto_promote_s:
            promote_blue_green(rollout, d, ROLLOUTS, "auto-promoted")
        else:
            describe_now(rollout)
        return False
    rollout.phase = Phase.PAUSED
    rollout.pause_until = None
    describe_now(rollout)
    text = (f"rollout {rollout.number}: preview of revision {rollout.canary_revision.number} "
            f"waiting for promotion")
    timeline(d, "RolloutPaused", text)
    notify.send(d, rollout, "rollout.paused", text)
    return False


def _canary_ready(rollout: Rollout, d: Deployment) -> bool:
    # What the pattern runs (batch: no replicas; its job runs split instead).
    desired = get_pattern(d.agent.pattern).desired(d, d.version, features=None).replicas
    split = wanted(rollout, d, desired)
    need = split.current if split is not None else 0
    have = Instance.objects.filter(deployment_id=d.pk, revision_id=rollout.canary_revision_id,
                                   health=Health.HEALTHY).count()
    return have >= need


def _remember_instances(rollout: Rollout) -> None:
    """The names runs are filed under, per revision: instances, and the units
    of the job runs started during the rollout (batch)."""
    seen = rollout.instances or {}
    pair = [rollout.stable_revision_id, rollout.canary_revision_id]
    units = JobRun.objects.filter(deployment_id=rollout.deployment_id, revision_id__in=pair,
                                  started_at__gte=rollout.started_at).exclude(unit_name="")
    for revision_id, name in [*Instance.objects.filter(
            deployment_id=rollout.deployment_id, revision_id__in=pair
    ).values_list("revision_id", "name"), *units.values_list("revision_id", "unit_name")]:
        names = seen.setdefault(str(revision_id), [])
        if name not in names:
            names.append(name)
    rollout.instances = seen


def _background_due(rollout: Rollout) -> bool:
    if rollout.strategy == Strategy.BLUE_GREEN:
        return False  # blue-green's template is the pre-promotion analysis
    if rollout.weight <= 0:
        return False
    state = rollout.analysis_state.get("background", {})
    return state.get("next_at", 0) <= timezone.now().timestamp()


def _measure(rollout: Rollout, d: Deployment, key: str, template: dict, now, *,
             background: bool = False) -> bool:
    """Take one measurement; False when it ended the run of steps (an abort
    or a pause)."""
    state = dict(rollout.analysis_state.get(key, {}))
    if "started_at" not in state:
        # The first measurement is one interval after the analysis starts:
        # the window then holds the canary's runs at this weight.
        state["started_at"] = now.timestamp()
        state["next_at"] = now.timestamp() + template["interval_s"]
        rollout.analysis_state[key] = state
        return True
    names = rollout.instances or {}
    window = min(template["window_s"], max(1, int(now.timestamp() - state["started_at"])))
    canary = analysis.figures(d.pk, names.get(str(rollout.canary_revision_id), []),
                              rollout.canary_revision_id, window, now)
    stable = analysis.figures(d.pk, names.get(str(rollout.stable_revision_id), []),
                              rollout.stable_revision_id, window, now)
    result = analysis.judge(template, canary, stable)
    Measurement.objects.create(rollout=rollout, analysis=key, at=now, weight=rollout.weight,
                               verdict=result.verdict, reason=result.reason[:500],
                               metrics=[{**m, "canary_runs": canary.runs,
                                         "stable_runs": stable.runs} for m in result.metrics])
    state["taken"] = state.get("taken", 0) + 1
    state["next_at"] = now.timestamp() + template["interval_s"]
    if result.verdict == Verdict.FAILED:
        state["failures"] = state.get("failures", 0) + 1
    elif result.verdict == Verdict.INCONCLUSIVE:
        state["inconclusive"] = state.get("inconclusive", 0) + 1
    rollout.analysis_state[key] = state
    if result.verdict == Verdict.FAILED and state["failures"] > template["failure_limit"]:
        abort(rollout, d, ROLLOUTS, f"rollout aborted: {result.reason}")
        return False
    if result.verdict == Verdict.INCONCLUSIVE and \
            state["inconclusive"] > template["inconclusive_limit"]:
        if background:
            return True  # background analysis waits for data; the steps go on
        rollout.phase = Phase.PAUSED
        rollout.pause_until = None
        rollout.message = f"analysis inconclusive: {result.reason}; waiting for a person"[:500]
        state["inconclusive"] = 0
        state["taken"] = max(0, state["taken"] - 1)  # promote skips; retry measures again
        text = f"rollout {rollout.number} paused: {rollout.message}"
        timeline(d, "RolloutPaused", text, warning=True)
        notify.send(d, rollout, "rollout.paused", text)
        return False
    return True

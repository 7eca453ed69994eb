"""Deployments: desired state. Creating, changing, scaling, restarting,
rolling back and deleting, each checked against the team's policy (only
changes that go up are refused), recorded as revisions where what runs
changes, and reconciled after commit."""
from __future__ import annotations

import secrets as pysecrets

from django.db import transaction
from django.db.models import F, ProtectedError
from django.utils import timezone

from .. import audit, effects, events, revisions
from ..audit import Actor
from ..errors import Conflict, Invalid, NotFound
from ..models import (
    Agent,
    AgentVersion,
    Deployment,
    DeploymentState,
    Health,
    Secret,
    Target,
)
from .base import apply_changes, schedule_reconcile, team_policy, validated_save
from .batch import deployment_state_changed, sync_schedules

SPEC_CHANGES = {"version", "replicas", "state", "autoscale_min", "autoscale_max",
                "autoscale_signal", "autoscale_target", "rollout_strategy"}
# Settings that change neither what runs nor how many: no generation, no reconcile.
SETTING_CHANGES = {"revision_history_limit"}


def _growth(deployment: Deployment, before: dict | None) -> set[str]:
    """What a change to ``deployment`` adds, compared with ``before`` (its
    snapshot; ``None`` for a new deployment): ``replicas`` (more of them),
    ``autoscale`` (autoscaling turned on, or a higher maximum), ``resume`` (back
    to active) and ``version`` (a new version to roll out). Pausing, stopping,
    scaling down and turning autoscaling off add nothing."""
    if before is None:
        return {"replicas", "autoscale", "resume", "version"}
    grows = set()
    if (deployment.replicas or 0) > (before["replicas"] or 0):
        grows.add("replicas")
    if deployment.autoscale_signal and (
            not before["autoscale_signal"]
            or (deployment.autoscale_max or 0) > (before["autoscale_max"] or 0)):
        grows.add("autoscale")
    if deployment.state == DeploymentState.ACTIVE and before["state"] != DeploymentState.ACTIVE:
        grows.add("resume")
    if deployment.version_id != before["version_id"]:
        grows.add("version")
    return grows


def _check_policy(deployment: Deployment, before: dict | None = None) -> None:
    """Refuse what the team's policy forbids, but only changes that go up.

    An admin may tighten a policy below what a deployment already runs; the way
    down (pause, stop, scale down, scale to zero, autoscaling off) must stay
    open then, or a budget's pause could not stop the spending."""
    grows = _growth(deployment, before)
    if not grows:
        return
    policy = team_policy(deployment.agent.team_id)
    limit = f"Team policy allows at most {policy.max_replicas} replicas per deployment."
    autoscale_max = (deployment.autoscale_max or 0) if deployment.autoscale_signal else 0
    if "replicas" in grows and (deployment.replicas or 0) > policy.max_replicas:
        raise Invalid({"replicas": [limit]})
    if "autoscale" in grows and autoscale_max > policy.max_replicas:
        raise Invalid({"autoscale_max": [limit]})
    if "resume" in grows and max(deployment.replicas or 0, autoscale_max) > policy.max_replicas:
        raise Invalid({"state": [f"{limit} Scale down to resume."]})
    kinds = policy.allowed_target_kinds
    if kinds and deployment.target.kind not in kinds:
        raise Invalid({"target": [f"Team policy allows only targets of kind: {', '.join(kinds)}"
                                  f" (this one is {deployment.target.kind}); it may be scaled "
                                  "down, paused or stopped, nothing more."]})


@transaction.atomic
def create_deployment(agent: Agent, *, version: AgentVersion, target: Target, actor: Actor,
                      **fields) -> Deployment:
    if version.agent_id != agent.pk:
        raise Invalid({"version": ["This version belongs to another agent."]})
    if target.team_id != agent.team_id:
        raise NotFound("Target not found.")
    deployment = Deployment(agent=agent, version=version, target=target, **fields)
    _check_policy(deployment)
    deployment.health = Health.SUSPENDED if deployment.state != DeploymentState.ACTIVE \
        else Health.PROGRESSING
    deployment.health_reason = "waiting for the first reconcile"
    validated_save(deployment)
    # "<deployment id>.<secret>": /v1/traces finds the deployment, then checks the secret.
    deployment.ingest_token = f"{deployment.pk}.{pysecrets.token_urlsafe(32)}"
    deployment.save(update_fields=["ingest_token"])
    revisions.record(deployment, actor=actor, cause="created")
    sync_schedules(deployment, actor)
    audit.record(actor, "deployment.create", deployment, after=audit.snapshot(deployment))
    schedule_reconcile(deployment.pk)
    return deployment


@transaction.atomic
def update_deployment(deployment: Deployment, *, actor: Actor, **changes) -> Deployment:
    """Change desired state; any spec change bumps ``generation`` and reconciles,
    and a new version makes a new revision (replicas, state and autoscaling
    do not: they change how many instances run, not what they run)."""
    deployment = Deployment.objects.select_for_update().select_related(
        "agent", "target").get(pk=deployment.pk)
    before = audit.snapshot(deployment)
    version = changes.get("version")
    if version is not None and version.agent_id != deployment.agent_id:
        raise Invalid({"version": ["This version belongs to another agent."]})
    changed = apply_changes(deployment, changes, SPEC_CHANGES | SETTING_CHANGES)
    if not changed:
        return deployment
    _check_policy(deployment, before)
    spec_changed = bool(SPEC_CHANGES.intersection(changed))
    update_fields = [*changed, "updated_at"]
    if spec_changed:
        deployment.generation = F("generation") + 1
        update_fields.append("generation")
    validated_save(deployment, exclude=["generation"], update_fields=update_fields)
    deployment.refresh_from_db()
    if "version" in changed:
        revisions.record(deployment, actor=actor, cause=f"version v{deployment.version.number}")
        sync_schedules(deployment, actor)
    elif "revision_history_limit" in changed:
        revisions.prune(deployment)
    if "state" in changed:
        deployment_state_changed(deployment, before["state"], actor)
    audit.record(actor, _deployment_action(changed, deployment), deployment,
                 before=before, after=audit.snapshot(deployment))
    if not spec_changed:
        return deployment
    schedule_reconcile(deployment.pk)
    events.publish(deployment.agent.team_id, "deployment.changed",
                   {"replicas": deployment.replicas, "state": deployment.state},
                   deployment_id=deployment.pk)
    return deployment


def _deployment_action(changed: list[str], deployment: Deployment) -> str:
    if changed == ["replicas"]:
        return "deployment.scale"
    if changed == ["state"]:
        return {"paused": "deployment.pause", "stopped": "deployment.stop"}.get(
            deployment.state, "deployment.resume")
    return "deployment.update"


def scale_deployment(deployment: Deployment, *, replicas: int, actor: Actor) -> Deployment:
    return update_deployment(deployment, replicas=replicas, actor=actor)


@transaction.atomic
def delete_deployment(deployment: Deployment, *, actor: Actor) -> None:
    """Delete the row; its runtime objects are removed after commit (and any a
    crash leaves behind are collected as orphans by the beat sweep)."""
    target_ids = [t.pk for t in deployment.eligible_targets()]
    deployment_id = deployment.pk
    audit.record(actor, "deployment.delete", deployment, before=audit.snapshot(deployment))
    try:
        deployment.delete()
    except ProtectedError as exc:
        raise Conflict(str(exc)) from None
    # With the broker down, orphan collection removes the instances later.
    effects.enqueue_on_commit("deployments.tasks.teardown", deployment_id, target_ids)


@transaction.atomic
def restart_deployment(deployment: Deployment, *, actor: Actor) -> Deployment:
    """Replace every instance (rolling), like `kubectl rollout restart`: instances
    created before the ``restarted_at`` stamp are replaced; no new revision."""
    deployment = Deployment.objects.select_for_update().get(pk=deployment.pk)
    before = audit.snapshot(deployment)
    Deployment.objects.filter(pk=deployment.pk).update(generation=F("generation") + 1,
                                                       restarted_at=timezone.now())
    deployment.refresh_from_db()
    audit.record(actor, "deployment.restart", deployment, before=before,
                 after=audit.snapshot(deployment))
    schedule_reconcile(deployment.pk)
    return deployment


@transaction.atomic
def rollback_deployment(deployment: Deployment, *, actor: Actor,
                        revision: int | None = None) -> Deployment:
    """Re-apply revision number ``revision`` (default: the newest earlier
    revision that runs something else than the current one). The chosen
    revision's version is deployed again, with today's secret values, as a new
    revision; instances still running that spec are kept."""
    deployment = Deployment.objects.select_for_update(of=("self",)).select_related(
        "agent", "target", "version", "revision").get(pk=deployment.pk)
    current = revisions.desired_locked(deployment)
    if revision is None:
        chosen = (deployment.revisions.filter(number__lt=current.number)
                  .exclude(digest=current.digest).order_by("-number").first())
        if chosen is None:
            raise Conflict("There is no earlier revision to roll back to.")
    else:
        chosen = deployment.revisions.filter(number=revision).first()
        if chosen is None:
            kept = list(deployment.revisions.order_by("number").values_list("number", flat=True))
            raise NotFound(f"Revision {revision} not found; this deployment keeps "
                           f"revision(s) {revisions.ranges(kept)}.")
        if chosen.pk == current.pk:
            raise Conflict(f"Revision {revision} is the current revision.")
    version = chosen.version
    if version is None:
        raise Conflict(f"Revision {chosen.number} ran v{chosen.spec.get('version')}, which has "
                       "been deleted; it cannot be re-applied.")
    missing = sorted(set(version.secret_refs or ()) - set(
        Secret.objects.filter(team_id=deployment.agent.team_id,
                              name__in=version.secret_refs or ()).values_list("name", flat=True)))
    if missing:
        raise Conflict(f"Revision {chosen.number} needs secret(s) that no longer exist: "
                       f"{', '.join(missing)}.")
    if revisions.resolve_for(deployment, version)[1] == current.digest:
        raise Conflict(f"Revision {chosen.number} runs the same spec as the current revision "
                       f"{current.number}; there is nothing to roll back.")
    before = audit.snapshot(deployment)
    deployment.version = version
    deployment.generation = F("generation") + 1
    deployment.save(update_fields=["version", "generation", "updated_at"])
    deployment.refresh_from_db()
    made = revisions.record(deployment, actor=actor, version=version,
                            cause=f"rollback to revision {chosen.number}")
    sync_schedules(deployment, actor)
    audit.record(actor, "deployment.rollback", deployment, before=before,
                 after={**audit.snapshot(deployment), "rolled_back_to": chosen.number,
                        "revision_number": made.number if made else None})
    schedule_reconcile(deployment.pk)
    events.publish(deployment.agent.team_id, "deployment.changed",
                   {"replicas": deployment.replicas, "state": deployment.state},
                   deployment_id=deployment.pk)
    return deployment

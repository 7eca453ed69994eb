"""Revisions: what a deployment's instances run, as numbered immutable snapshots.

A deployment gets a new :class:`~deployments.models.Revision` whenever what its
instances run changes: its version (which carries the image or bundle,
command, env, secret references, cpu and memory, port, probes and pattern
settings) or the value of a secret that version refers to. Replicas, state,
autoscaling, the rollout strategy and the history limit change how many
instances run or how, not what, and make none.

The snapshot holds the version's spec plus what is resolved at deploy time;
secrets appear as keyed fingerprints (HMAC with the site key), never as values.
Instances point at the revision they were created from, so the reconciler
replaces exactly those whose revision is not the deployment's current one (or
that are older than its ``restarted_at`` stamp).

Writers are the verbs in ``actions`` (which audit) and, for a version set
outside the verbs (fixtures, old rows), :func:`desired` in the reconciler.
"""
from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Max

from .audit import Actor
from .models import AgentVersion, Deployment, Instance, Revision, Secret

REDACTED_FINGERPRINT = "hmac:…"


# The snapshot ------------------------------------------------------------------------


def fingerprint(name: str, value: str) -> str:
    """A stable, keyed stand-in for a secret value: equal values, equal prints."""
    mac = hmac.new(settings.SECRET_KEY.encode(), f"{name}\0{value}".encode(), hashlib.sha256)
    return "hmac:" + mac.hexdigest()[:16]


def spec_digest(spec: dict[str, Any]) -> str:
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def resolve(version: AgentVersion, secret_values: dict[str, str]) -> tuple[dict, str]:
    """The resolved spec of ``version`` with the team's current secret values,
    and its digest."""
    spec: dict[str, Any] = {"version": version.number, **version.spec()}
    spec["secrets"] = {
        ref: fingerprint(ref, secret_values[ref]) if ref in secret_values else None
        for ref in sorted(set(spec.get("secret_refs") or ()))
    }
    return spec, spec_digest(spec)


def secret_values(team_id: int, refs) -> dict[str, str]:
    refs = list(refs or ())
    if not refs:
        return {}
    return dict(Secret.objects.filter(team_id=team_id, name__in=refs)
                .values_list("name", "value"))


def resolve_for(deployment: Deployment, version: AgentVersion) -> tuple[dict, str]:
    return resolve(version, secret_values(deployment.agent.team_id, version.secret_refs))


# Writing ------------------------------------------------------------------------------


def record(deployment: Deployment, *, actor: Actor | None, cause: str,
           version: AgentVersion | None = None) -> Revision | None:
    """Make ``deployment``'s next revision from ``version`` (default: its
    current version) and make it current; None if it would equal the current
    one. The caller holds the deployment's row lock (``select_for_update``)."""
    version = version or deployment.version
    spec, digest = resolve_for(deployment, version)
    current = Revision.objects.filter(pk=deployment.revision_id).first() \
        if deployment.revision_id else None
    if current is not None and current.digest == digest and current.version_id == version.pk:
        return None
    number = (deployment.revisions.aggregate(n=Max("number"))["n"] or 0) + 1
    user = actor.user if actor is not None and actor.user is not None and actor.user.pk \
        else None
    revision = Revision.objects.create(
        deployment=deployment, number=number, version=version, spec=spec, digest=digest,
        cause=cause[:200], created_by=user,
        actor_label=(actor.label if actor is not None else "reconciler")[:150])
    Deployment.objects.filter(pk=deployment.pk).update(revision=revision)
    deployment.revision = revision
    # Instances already running exactly this spec (the stable ones, when a
    # rollback lands mid-rollout) are this revision: nothing to replace.
    Instance.objects.filter(deployment=deployment, revision__digest=digest).update(
        revision=revision)
    prune(deployment)
    return revision


def prune(deployment: Deployment) -> int:
    """Delete revisions beyond the history limit that no instance runs; the
    current revision always stays. Returns how many were deleted."""
    keep = set(deployment.revisions.order_by("-number").values_list("pk", flat=True)
               [: deployment.revision_history_limit])
    if deployment.revision_id:
        keep.add(deployment.revision_id)
    used = Instance.objects.filter(deployment_id=deployment.pk, revision__isnull=False) \
        .values("revision_id")
    deleted, _ = deployment.revisions.exclude(pk__in=keep).exclude(pk__in=used).delete()
    return deleted


def desired(deployment: Deployment) -> Revision:
    """The revision the reconciler converges to. When the version was set
    outside the verbs (a fixture, a row from before revisions), the revision is
    made here, by the reconciler."""
    revision = deployment.revision if deployment.revision_id else None
    if revision is not None and revision.version_id == deployment.version_id:
        return revision
    with transaction.atomic():
        locked = Deployment.objects.select_for_update(of=("self",)).select_related(
            "agent", "version", "revision").get(pk=deployment.pk)
        revision = desired_locked(locked)
    deployment.revision = revision
    return revision


def desired_locked(deployment: Deployment) -> Revision:
    """:func:`desired` for a deployment whose row lock the caller holds."""
    revision = deployment.revision if deployment.revision_id else None
    if revision is not None and revision.version_id == deployment.version_id:
        return revision
    cause = (f"version v{deployment.version.number} (set outside Hangar's actions)"
             if revision is not None else "first revision")
    return record(deployment, actor=None, cause=cause) or deployment.revision


# Reading ------------------------------------------------------------------------------


def outdated(instance: Instance, deployment: Deployment) -> bool:
    """Whether ``instance`` must be replaced: it runs another revision, or was
    created before the deployment's last restart."""
    if instance.revision_id != deployment.revision_id:
        return True
    stamp = deployment.restarted_at
    return stamp is not None and instance.created_at is not None and instance.created_at < stamp


def for_version(deployment: Deployment, version_number: str | None) -> Revision | None:
    """The revision an adopted runtime object (labelled with a version number)
    most likely runs: the current one if the number matches, else the newest
    revision of that version."""
    if deployment.revision_id and deployment.revision and \
            str(deployment.revision.spec.get("version")) == str(version_number):
        return deployment.revision
    if not version_number or not str(version_number).isdigit():
        return None
    return deployment.revisions.filter(version__number=int(version_number)) \
        .order_by("-number").first()


def ranges(numbers: list[int]) -> str:
    """``[1, 2, 3, 7]`` → ``"1–3, 7"``."""
    spans: list[list[int]] = []
    for n in sorted(numbers):
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}–{b}" for a, b in spans) or "none"


@dataclass(frozen=True)
class Change:
    """One difference between two specs, in words an operator reads."""

    field: str
    kind: str  # "added" | "removed" | "changed"
    before: Any = None
    after: Any = None

    @property
    def text(self) -> str:
        if self.field.startswith("secrets."):
            return {"added": "now used", "removed": "no longer used"}.get(
                self.kind, "value changed")
        if self.kind == "added":
            return f"added {_show(self.after)}"
        if self.kind == "removed":
            return f"removed (was {_show(self.before)})"
        return f"{_show(self.before)} → {_show(self.after)}"

    def as_dict(self) -> dict[str, Any]:
        secret = self.field.startswith("secrets.")
        return {"field": self.field, "change": self.kind, "text": self.text,
                "before": None if secret else self.before,
                "after": None if secret else self.after}


def _show(value: Any) -> str:
    if value is None or value == "":
        return "(empty)"
    if isinstance(value, list):
        return " ".join(str(v) for v in value) if value else "(empty)"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True) if value else "(empty)"
    return str(value)


def _flatten(spec: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts become dotted paths (``env.LOG_LEVEL``); empty dicts vanish,
    lists stay whole."""
    flat: dict[str, Any] = {}
    for key, value in spec.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{path}."))
        else:
            flat[path] = value
    return flat


# The order fields are shown in: what operators look for first.
FIELD_ORDER = ("version", "image", "bundle", "command", "env", "secrets", "cpu", "memory_mb",
               "port", "health", "model_settings", "pattern_settings")


def _order(path: str):
    top = path.split(".", 1)[0]
    return (FIELD_ORDER.index(top) if top in FIELD_ORDER else len(FIELD_ORDER)), path


def diff(before: dict[str, Any] | None, after: dict[str, Any]) -> list[Change]:
    """What changed from spec ``before`` to spec ``after`` (``before`` None: the
    first revision, nothing to compare). Secret references show as
    ``secrets.<name>`` being used, no longer used, or changing value."""
    if before is None:
        return []
    old, new = _flatten(before), _flatten(after)
    changes = []
    for path in sorted((set(old) | set(new)) - {"secret_refs"}, key=_order):
        a, b = old.get(path), new.get(path)
        if path in old and path in new and a == b:
            continue
        kind = "added" if path not in old else "removed" if path not in new else "changed"
        changes.append(Change(path, kind, a, b))
    return changes


def history(deployment: Deployment) -> list[dict[str, Any]]:
    """The deployment's revisions, newest first, each with what changed from
    the one before it and how many instances run it."""
    revisions = list(deployment.revisions.select_related("version").order_by("number"))
    running: dict[int, int] = {}
    for revision_id in Instance.objects.filter(deployment_id=deployment.pk).values_list(
            "revision_id", flat=True):
        running[revision_id] = running.get(revision_id, 0) + 1
    current_digest = next((r.digest for r in revisions if r.pk == deployment.revision_id), None)
    rows = []
    previous = None
    for revision in revisions:
        rows.append({
            "number": revision.number,
            "digest": revision.digest,
            "version_id": revision.version_id,
            "version_number": revision.spec.get("version"),
            "cause": revision.cause,
            "actor": revision.actor_label,
            "created_at": revision.created_at,
            "current": revision.pk == deployment.revision_id,
            "same_as_current": revision.digest == current_digest,
            "instances": running.get(revision.pk, 0),
            "previous": previous.number if previous else None,
            "changes": [c.as_dict() for c in diff(previous.spec if previous else None,
                                                  revision.spec)],
            "spec": revision.spec,
            "spec_text": json.dumps(revision.spec, indent=2, sort_keys=True),
        })
        previous = revision
    rows.reverse()
    return rows

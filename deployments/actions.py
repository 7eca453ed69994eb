"""Every state change is one verb here: atomic, validated, audited, and with
its side effects (reconcile, live events) scheduled after commit.

Callers (API, UI, admin, workers) pass the acting :class:`Actor`; role checks
happen in ``access`` before a verb is called, policy checks happen here.
"""
from __future__ import annotations

import hashlib
import secrets as pysecrets
from datetime import datetime
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import F, Max, ProtectedError
from django.utils import timezone

from . import audit, effects, events, revisions
from .audit import Actor
from .errors import Conflict, Invalid, NotFound
from .models import (
    ROLE_RANK,
    SCOPE_ROLE,
    Agent,
    AgentVersion,
    ApiToken,
    Deployment,
    DeploymentState,
    Health,
    Membership,
    Policy,
    Role,
    Secret,
    Target,
    Team,
)
from .patterns import get_pattern
from .runtimes import validate_connection

TOKEN_PREFIX = "hgr_"


def validated_save(obj, *, exclude: list[str] | None = None, update_fields=None,
                   conflict: str | None = None) -> None:
    """full_clean then save, turning validation errors into ``Invalid`` (422) and
    clashes with an existing row (a unique field or constraint, found by the
    check or by the database) into ``Conflict`` (409, with ``conflict`` as its
    message when given). Every app's verbs save through here."""
    try:
        obj.full_clean(exclude=exclude)
    except ValidationError as exc:
        if _is_unique_clash(exc):
            messages = _messages(exc)
            if isinstance(messages, dict) and set(messages) == {"__all__"}:
                messages = " ".join(messages["__all__"])
            raise Conflict(conflict or messages) from None
        raise Invalid(_messages(exc)) from None
    try:
        with transaction.atomic():
            obj.save(update_fields=update_fields)
    except IntegrityError as exc:
        raise Conflict(conflict or
                       f"{obj._meta.verbose_name.capitalize()} clashes with an existing one: {exc}"
                       ) from None


UNIQUE_CODES = {"unique", "unique_together"}


def _is_unique_clash(exc: ValidationError) -> bool:
    """Whether every error is a uniqueness clash (Django's ``unique`` codes, also
    given for a ``UniqueConstraint`` on fields) rather than a bad value."""
    errors = [e for group in exc.error_dict.values() for e in group] \
        if hasattr(exc, "error_dict") else list(exc.error_list)
    return bool(errors) and all(e.code in UNIQUE_CODES for e in errors)


def _messages(exc: ValidationError) -> Any:
    if hasattr(exc, "message_dict"):
        return {k: [str(m) for m in v] for k, v in exc.message_dict.items()}
    return [str(m) for m in exc.messages]


def apply_changes(obj, changes: dict[str, Any], allowed: set[str]) -> list[str]:
    """Set the ``changes`` that differ on ``obj``; the names of the fields set.
    A field outside ``allowed`` is refused (422) before anything is set."""
    unknown = set(changes) - allowed
    if unknown:
        raise Invalid(f"These fields cannot be changed: {', '.join(sorted(unknown))}.")
    changed = []
    for name, value in changes.items():
        if getattr(obj, name) != value:
            setattr(obj, name, value)
            changed.append(name)
    return changed


# The names this module's verbs use.
_validated_save = validated_save
_apply = apply_changes


def schedule_reconcile(deployment_id: int) -> None:
    """Reconcile after commit; with the broker down the sweep does it later."""
    effects.enqueue_on_commit("deployments.tasks.reconcile", deployment_id)


# Teams and members ----------------------------------------------------------------


@transaction.atomic
def create_team(*, name: str, slug: str, actor: Actor, join: bool = True) -> Team:
    """A team with the default policy; with ``join`` the acting user becomes its
    first admin (the admin site passes ``join=False``: its inline names the members)."""
    team = Team(name=name, slug=slug)
    _validated_save(team)
    Policy.objects.create(team=team)
    audit.record(actor, "team.create", team, after=audit.snapshot(team))
    if join and actor.user is not None and actor.user.pk:
        membership = Membership.objects.create(team=team, user=actor.user, role=Role.ADMIN)
        audit.record(actor, "member.add", membership, team_id=team.pk,
                     after=audit.snapshot(membership))
    return team


@transaction.atomic
def update_team(team: Team, *, actor: Actor, **changes) -> Team:
    before = audit.snapshot(team)
    changed = _apply(team, changes, {"name"})
    if changed:
        _validated_save(team, update_fields=changed)
        audit.record(actor, "team.update", team, before=before, after=audit.snapshot(team))
    return team


@transaction.atomic
def delete_team(team: Team, *, actor: Actor) -> None:
    if Deployment.objects.filter(agent__team=team).exists():
        raise Conflict("Delete the team's deployments first.")
    before = audit.snapshot(team)
    audit.record(actor, "team.delete", team, before=before)
    team.delete()


@transaction.atomic
def add_member(team: Team, *, username: str, role: str, actor: Actor) -> Membership:
    user = get_user_model().objects.filter(username=username).first()
    if user is None:
        raise NotFound({"username": [f"No user named {username!r}."]})
    if role not in ROLE_RANK:
        raise Invalid({"role": [f"Role must be one of {', '.join(Role.values)}."]})
    membership = Membership(team=team, user=user, role=role)
    _validated_save(membership)
    audit.record(actor, "member.add", membership, after=audit.snapshot(membership))
    return membership


@transaction.atomic
def change_member_role(membership: Membership, *, role: str, actor: Actor) -> Membership:
    if role not in ROLE_RANK:
        raise Invalid({"role": [f"Role must be one of {', '.join(Role.values)}."]})
    membership = Membership.objects.select_for_update().get(pk=membership.pk)
    before = audit.snapshot(membership)
    if membership.role == Role.ADMIN and role != Role.ADMIN:
        _keep_an_admin(membership)
    membership.role = role
    membership.save(update_fields=["role"])
    audit.record(actor, "member.update", membership, before=before,
                 after=audit.snapshot(membership))
    return membership


@transaction.atomic
def remove_member(membership: Membership, *, actor: Actor) -> None:
    membership = Membership.objects.select_for_update().get(pk=membership.pk)
    if membership.role == Role.ADMIN:
        _keep_an_admin(membership)
    audit.record(actor, "member.remove", membership, before=audit.snapshot(membership))
    membership.delete()


def _keep_an_admin(membership: Membership) -> None:
    others = Membership.objects.select_for_update().filter(
        team_id=membership.team_id, role=Role.ADMIN
    ).exclude(pk=membership.pk)
    if not others.exists():
        raise Conflict("A team must keep at least one admin.")


# Agents and versions ------------------------------------------------------------


def _policy(team_id: int) -> Policy:
    policy, _ = Policy.objects.get_or_create(team_id=team_id)
    return policy


@transaction.atomic
def create_agent(team: Team, *, actor: Actor, **fields) -> Agent:
    allowed = _policy(team.pk).allowed_patterns
    if allowed and fields.get("pattern") not in allowed:
        raise Invalid({"pattern": [f"Team policy allows only: {', '.join(allowed)}."]})
    agent = Agent(team=team, **fields)
    _validated_save(agent)
    audit.record(actor, "agent.create", agent, after=audit.snapshot(agent))
    return agent


@transaction.atomic
def update_agent(agent: Agent, *, actor: Actor, **changes) -> Agent:
    before = audit.snapshot(agent)
    changed = _apply(agent, changes, {"name", "description"})
    if changed:
        _validated_save(agent, update_fields=[*changed, "updated_at"])
        audit.record(actor, "agent.update", agent, before=before, after=audit.snapshot(agent))
    return agent


@transaction.atomic
def delete_agent(agent: Agent, *, actor: Actor) -> None:
    if agent.deployments.exists():
        raise Conflict("Delete this agent's deployments first.")
    audit.record(actor, "agent.delete", agent, before=audit.snapshot(agent))
    agent.delete()


@transaction.atomic
def create_version(agent: Agent, *, actor: Actor, **spec) -> AgentVersion:
    Agent.objects.select_for_update().filter(pk=agent.pk).first()  # serialise numbering
    missing = [ref for ref in spec.get("secret_refs") or []
               if not Secret.objects.filter(team_id=agent.team_id, name=ref).exists()]
    if missing:
        raise NotFound({"secret_refs": [f"Unknown secret(s): {', '.join(missing)}."]})
    if not spec.get("image") and not spec.get("bundle") and not spec.get("command"):
        raise Invalid({"image": ["Give an image, a bundle or a command to run."]})
    spec["pattern_settings"] = get_pattern(agent.pattern).validate_settings(
        spec.get("pattern_settings"))
    number = (agent.versions.aggregate(n=Max("number"))["n"] or 0) + 1
    version = AgentVersion(agent=agent, number=number, created_by=_user(actor), **spec)
    _validated_save(version, exclude=["digest"])
    audit.record(actor, "version.create", version, after=audit.snapshot(version))
    return version


@transaction.atomic
def delete_version(version: AgentVersion, *, actor: Actor) -> None:
    in_use = Deployment.objects.filter(version=version).exists()
    if in_use:
        raise Conflict("This version is deployed; move its deployments to another version first.")
    audit.record(actor, "version.delete", version, before=audit.snapshot(version))
    version.delete()


def _user(actor: Actor):
    return actor.user if actor.user is not None and actor.user.pk else None


# Targets ------------------------------------------------------------------------


@transaction.atomic
def create_target(team: Team, *, actor: Actor, **fields) -> Target:

    allowed = _policy(team.pk).allowed_target_kinds
    if allowed and fields.get("kind") not in allowed:
        raise Invalid({"kind": [f"Team policy allows only: {', '.join(allowed)}."]})
    fields["connection"] = validate_connection(fields.get("kind", ""), fields.get("connection"))
    target = Target(team=team, **fields)
    _validated_save(target)
    audit.record(actor, "target.create", target, after=audit.snapshot(target))
    return target


@transaction.atomic
def update_target(target: Target, *, actor: Actor, **changes) -> Target:

    target = Target.objects.select_for_update().get(pk=target.pk)
    before = audit.snapshot(target)
    if "connection" in changes:
        # Sensitive values omitted from an update keep their stored value.
        merged = {**target.connection, **(changes["connection"] or {})}
        changes["connection"] = validate_connection(target.kind, merged)
    changed = _apply(target, changes,
                     {"name", "connection", "labels", "price_cpu_hour", "price_gib_hour"})
    if changed:
        _validated_save(target, update_fields=changed)
        audit.record(actor, "target.update", target, before=before, after=audit.snapshot(target))
        for pk in target.deployments.values_list("pk", flat=True):
            schedule_reconcile(pk)
    return target


@transaction.atomic
def delete_target(target: Target, *, actor: Actor) -> None:
    if target.deployments.exists():
        raise Conflict("Deployments still use this target.")
    audit.record(actor, "target.delete", target, before=audit.snapshot(target))
    target.delete()


# Deployments --------------------------------------------------------------------

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
    policy = _policy(deployment.agent.team_id)
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
    _validated_save(deployment)
    # "<deployment id>.<secret>": /v1/traces finds the deployment, then checks the secret.
    deployment.ingest_token = f"{deployment.pk}.{pysecrets.token_urlsafe(32)}"
    deployment.save(update_fields=["ingest_token"])
    revisions.record(deployment, actor=actor, cause="created")
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
    changed = _apply(deployment, changes, SPEC_CHANGES | SETTING_CHANGES)
    if not changed:
        return deployment
    _check_policy(deployment, before)
    spec_changed = bool(SPEC_CHANGES.intersection(changed))
    update_fields = [*changed, "updated_at"]
    if spec_changed:
        deployment.generation = F("generation") + 1
        update_fields.append("generation")
    _validated_save(deployment, exclude=["generation"], update_fields=update_fields)
    deployment.refresh_from_db()
    if "version" in changed:
        revisions.record(deployment, actor=actor, cause=f"version v{deployment.version.number}")
    elif "revision_history_limit" in changed:
        revisions.prune(deployment)
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
    audit.record(actor, "deployment.rollback", deployment, before=before,
                 after={**audit.snapshot(deployment), "rolled_back_to": chosen.number,
                        "revision_number": made.number if made else None})
    schedule_reconcile(deployment.pk)
    events.publish(deployment.agent.team_id, "deployment.changed",
                   {"replicas": deployment.replicas, "state": deployment.state},
                   deployment_id=deployment.pk)
    return deployment


# Secrets ------------------------------------------------------------------------


@transaction.atomic
def create_secret(team: Team, *, name: str, value: str, actor: Actor) -> Secret:
    secret = Secret(team=team, name=name, value=value)
    _validated_save(secret)
    audit.record(actor, "secret.create", secret, after=audit.snapshot(secret))
    return secret


@transaction.atomic
def update_secret(secret: Secret, *, value: str, actor: Actor) -> Secret:
    before = audit.snapshot(secret)
    secret.value = value
    _validated_save(secret, update_fields=["value", "updated_at"])
    audit.record(actor, "secret.update", secret, before=before, after=audit.snapshot(secret))
    _revise_for_secret(secret, actor=actor)
    return secret


def _revise_for_secret(secret: Secret, *, actor: Actor) -> None:
    """Instances read secret values when they start, so a new value is a new
    revision of every deployment whose version refers to the secret (rolled
    out like a new version)."""
    deployments = (Deployment.objects.select_for_update(of=("self",))
                   .select_related("agent", "version")
                   .filter(agent__team_id=secret.team_id).order_by("pk"))
    for deployment in deployments:
        if secret.name not in (deployment.version.secret_refs or ()):
            continue
        before = audit.snapshot(deployment)
        if revisions.record(deployment, actor=actor,
                            cause=f"secret {secret.name} changed") is None:
            continue
        Deployment.objects.filter(pk=deployment.pk).update(generation=F("generation") + 1)
        deployment.refresh_from_db()
        audit.record(actor, "deployment.update", deployment, before=before,
                     after=audit.snapshot(deployment))
        schedule_reconcile(deployment.pk)


@transaction.atomic
def delete_secret(secret: Secret, *, actor: Actor) -> None:
    deployed_refs = Deployment.objects.filter(agent__team_id=secret.team_id).values_list(
        "version__secret_refs", flat=True)
    if any(secret.name in (refs or []) for refs in deployed_refs):
        raise Conflict("A deployed version refers to this secret.")
    audit.record(actor, "secret.delete", secret, before=audit.snapshot(secret))
    secret.delete()


# API tokens ---------------------------------------------------------------------


def hash_token_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@transaction.atomic
def create_token(team: Team, *, name: str, scope: str, expires_at: datetime | None,
                 actor: Actor, user=None) -> tuple[ApiToken, str]:
    """Create a token acting for ``user`` (default: the actor).

    Returns the row and the plaintext, which is never stored.
    """
    user = user or _user(actor)
    if user is None:
        raise Invalid("Tokens act for a user.")
    if not Membership.objects.filter(team=team, user=user).exists() and not user.is_superuser:
        raise Invalid({"user": ["The token's user must be a member of the team."]})
    if scope not in SCOPE_ROLE:
        raise Invalid({"scope": [f"Scope must be one of: {', '.join(SCOPE_ROLE)}."]})
    if expires_at is not None and expires_at <= timezone.now():
        raise Invalid({"expires_at": ["Expiry must be in the future."]})
    prefix = pysecrets.token_hex(6)
    secret = pysecrets.token_urlsafe(32)
    token = ApiToken(team=team, user=user, name=name, scope=scope, expires_at=expires_at,
                     prefix=prefix, hashed=hash_token_secret(secret))
    _validated_save(token)
    audit.record(actor, "token.create", token, after=audit.snapshot(token))
    return token, f"{TOKEN_PREFIX}{prefix}_{secret}"


@transaction.atomic
def revoke_token(token: ApiToken, *, actor: Actor) -> ApiToken:
    before = audit.snapshot(token)
    if ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(
            revoked_at=timezone.now()) == 1:
        token.refresh_from_db()
        audit.record(actor, "token.revoke", token, before=before, after=audit.snapshot(token))
    return token


def authenticate_token(raw: str) -> ApiToken | None:
    """The active token for a bearer string, or None. Marks it used."""
    if not raw.startswith(TOKEN_PREFIX):
        return None
    prefix, _, secret = raw[len(TOKEN_PREFIX):].partition("_")
    token = ApiToken.objects.select_related("user").filter(prefix=prefix).first()
    if token is None or not token.is_active or not token.user.is_active:
        return None
    if not pysecrets.compare_digest(token.hashed, hash_token_secret(secret)):
        return None
    now = timezone.now()
    if token.last_used_at is None or (now - token.last_used_at).total_seconds() > 60:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    return token


# Policies -----------------------------------------------------------------------


@transaction.atomic
def update_policy(policy: Policy, *, actor: Actor, **changes) -> Policy:
    before = audit.snapshot(policy)
    changed = _apply(policy, changes, {"max_replicas", "allowed_target_kinds", "allowed_patterns"})
    if changed:
        _validated_save(policy, update_fields=[*changed, "updated_at"])
        audit.record(actor, "policy.update", policy, before=before, after=audit.snapshot(policy))
    return policy


# Users (the admin site's user pages) ----------------------------------------------

USER_FIELDS = {"username", "first_name", "last_name", "email", "is_active", "is_staff",
               "is_superuser", "groups", "user_permissions"}
USER_RELATIONS = ("groups", "user_permissions")


@transaction.atomic
def create_user(*, username: str, password: str | None, actor: Actor, **fields):
    """A user; without a password it can only sign in once someone sets one."""
    relations = {name: fields.pop(name) for name in USER_RELATIONS if name in fields}
    unknown = set(fields) - USER_FIELDS
    if unknown:
        raise Invalid(f"Unknown fields: {', '.join(sorted(unknown))}.")
    user = get_user_model()(username=username, **fields)
    if password:
        user.set_password(password)
    else:
        user.set_unusable_password()
    _validated_save(user, conflict="A user with this username exists.")
    for name, values in relations.items():
        getattr(user, name).set(values)
    audit.record(actor, "user.create", user, after=audit.snapshot(user))
    return user


@transaction.atomic
def update_user(user, *, actor: Actor, **changes):
    user = get_user_model().objects.select_for_update().get(pk=user.pk)
    before = audit.snapshot(user)
    relations = {name: changes.pop(name) for name in USER_RELATIONS if name in changes}
    changed = _apply(user, changes, USER_FIELDS)
    if changed:
        _validated_save(user, update_fields=changed,
                        conflict="A user with this username exists.")
    for name, values in relations.items():
        getattr(user, name).set(values)
    if changed or relations:
        audit.record(actor, "user.update", user, before=before,
                     after={**audit.snapshot(user), **{name: sorted(v.pk for v in values)
                                                      for name, values in relations.items()}})
    return user


@transaction.atomic
def set_user_password(user, *, password: str | None, actor: Actor):
    """Set a new password, or with ``None`` disable password sign-in."""
    user = get_user_model().objects.select_for_update().get(pk=user.pk)
    if password:
        user.set_password(password)
    else:
        user.set_unusable_password()
    user.save(update_fields=["password"])
    audit.record(actor, "user.password", user,
                 after={"password": "set" if password else "disabled"})
    return user


@transaction.atomic
def delete_user(user, *, actor: Actor) -> None:
    """Delete a user and their memberships, unless that leaves a team without an admin."""
    for membership in Membership.objects.select_for_update().filter(user=user, role=Role.ADMIN):
        _keep_an_admin(membership)
    audit.record(actor, "user.delete", user, before=audit.snapshot(user))
    user.delete()

"""The registry: agents, their immutable versions, and the targets they run on.
Team policy decides which patterns and target kinds a team may register."""
from __future__ import annotations

from django.db import transaction
from django.db.models import Max

from .. import audit
from ..audit import Actor
from ..errors import Conflict, Invalid, NotFound
from ..models import Agent, AgentVersion, Deployment, Secret, Target, Team
from ..patterns import get_pattern
from ..runtimes import validate_connection
from .base import acting_user, apply_changes, schedule_reconcile, team_policy, validated_save

# Agents and versions ------------------------------------------------------------


@transaction.atomic
def create_agent(team: Team, *, actor: Actor, **fields) -> Agent:
    allowed = team_policy(team.pk).allowed_patterns
    if allowed and fields.get("pattern") not in allowed:
        raise Invalid({"pattern": [f"Team policy allows only: {', '.join(allowed)}."]})
    agent = Agent(team=team, **fields)
    validated_save(agent)
    audit.record(actor, "agent.create", agent, after=audit.snapshot(agent))
    return agent


@transaction.atomic
def update_agent(agent: Agent, *, actor: Actor, **changes) -> Agent:
    before = audit.snapshot(agent)
    changed = apply_changes(agent, changes, {"name", "description"})
    if changed:
        validated_save(agent, update_fields=[*changed, "updated_at"])
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
    version = AgentVersion(agent=agent, number=number, created_by=acting_user(actor), **spec)
    validated_save(version, exclude=["digest"])
    audit.record(actor, "version.create", version, after=audit.snapshot(version))
    return version


@transaction.atomic
def delete_version(version: AgentVersion, *, actor: Actor) -> None:
    in_use = Deployment.objects.filter(version=version).exists()
    if in_use:
        raise Conflict("This version is deployed; move its deployments to another version first.")
    audit.record(actor, "version.delete", version, before=audit.snapshot(version))
    version.delete()


# Targets ------------------------------------------------------------------------


@transaction.atomic
def create_target(team: Team, *, actor: Actor, **fields) -> Target:

    allowed = team_policy(team.pk).allowed_target_kinds
    if allowed and fields.get("kind") not in allowed:
        raise Invalid({"kind": [f"Team policy allows only: {', '.join(allowed)}."]})
    fields["connection"] = validate_connection(fields.get("kind", ""), fields.get("connection"))
    target = Target(team=team, **fields)
    validated_save(target)
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
    changed = apply_changes(target, changes,
                     {"name", "connection", "labels", "price_cpu_hour", "price_gib_hour"})
    if changed:
        validated_save(target, update_fields=changed)
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

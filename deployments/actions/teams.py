"""Teams, their members and policy, and users (the admin site's user pages):
who may act, and the rule that a team always keeps an admin."""
from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db import transaction

from .. import audit
from ..audit import Actor
from ..errors import Conflict, Invalid, NotFound
from ..models import ROLE_RANK, Deployment, Membership, Policy, Role, Team
from .base import apply_changes, validated_save

# Teams and members ----------------------------------------------------------------


@transaction.atomic
def create_team(*, name: str, slug: str, actor: Actor, join: bool = True) -> Team:
    """A team with the default policy; with ``join`` the acting user becomes its
    first admin (the admin site passes ``join=False``: its inline names the members)."""
    team = Team(name=name, slug=slug)
    validated_save(team)
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
    changed = apply_changes(team, changes, {"name"})
    if changed:
        validated_save(team, update_fields=changed)
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
    validated_save(membership)
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


# Policy -------------------------------------------------------------------------


@transaction.atomic
def update_policy(policy: Policy, *, actor: Actor, **changes) -> Policy:
    before = audit.snapshot(policy)
    changed = apply_changes(policy, changes,
                            {"max_replicas", "allowed_target_kinds", "allowed_patterns"})
    if changed:
        validated_save(policy, update_fields=[*changed, "updated_at"])
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
    validated_save(user, conflict="A user with this username exists.")
    for name, values in relations.items():
        getattr(user, name).set(values)
    audit.record(actor, "user.create", user, after=audit.snapshot(user))
    return user


@transaction.atomic
def update_user(user, *, actor: Actor, **changes):
    user = get_user_model().objects.select_for_update().get(pk=user.pk)
    before = audit.snapshot(user)
    relations = {name: changes.pop(name) for name in USER_RELATIONS if name in changes}
    changed = apply_changes(user, changes, USER_FIELDS)
    if changed:
        validated_save(user, update_fields=changed,
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

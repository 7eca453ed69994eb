"""Scoped lookups: every fetch goes through here with the acting principal.

Outsiders (no role in the object's team) get ``NotFound`` so that existence
does not leak; members whose role is too low for a write get ``Forbidden``.
A token acts for its user, only in its own team, and never above its scope.
"""
from __future__ import annotations

from django.db.models import Model, QuerySet

from .audit import Actor
from .errors import Forbidden, NotFound
from .models import (
    ROLE_RANK,
    SCOPE_ROLE,
    Agent,
    AgentVersion,
    ApiToken,
    Deployment,
    JobRun,
    Membership,
    Role,
    Schedule,
    Secret,
    Target,
    Team,
)

# How each model reaches its team, for queryset filters. Other apps add theirs
# with ``register_team_path`` (telemetry's runs and budgets carry a ``team_id``).
TEAM_PATH: dict[type[Model], str] = {
    Team: "pk",
    Agent: "team_id",
    Target: "team_id",
    Secret: "team_id",
    ApiToken: "team_id",
    Membership: "team_id",
    AgentVersion: "agent__team_id",
    Deployment: "agent__team_id",
    Schedule: "deployment__agent__team_id",
    JobRun: "deployment__agent__team_id",
}

# Deployments with what every page and lookup of one shows (agent, team, version,
# target) in the same query.
DEPLOYMENTS = Deployment.objects.select_related("agent__team", "version", "target", "revision")


def register_team_path(model: type[Model], path: str = "team_id") -> None:
    """Make ``model`` usable with ``readable`` and ``get_for``: ``path`` is the
    lookup from a row to its team's id."""
    TEAM_PATH[model] = path


def team_roles(actor: Actor) -> dict[int, str] | None:
    """Role per team id for the actor; ``None`` means every team as admin.

    Computed once per actor (an actor lives for one request or message)."""
    if "roles" not in actor.roles_cache:
        actor.roles_cache["roles"] = _team_roles(actor)
    return actor.roles_cache["roles"]


def _team_roles(actor: Actor) -> dict[int, str] | None:
    user = actor.user
    if user is None or not user.is_authenticated or not user.is_active:
        return {}
    token = actor.token
    if user.is_superuser and token is None:
        return None
    roles = dict(Membership.objects.filter(user=user).values_list("team_id", "role"))
    if user.is_superuser:
        roles = {tid: Role.ADMIN for tid in Team.objects.values_list("pk", flat=True)}
    if token is not None:
        cap = SCOPE_ROLE[token.scope]
        role = roles.get(token.team_id)
        if role is None:
            return {}
        return {token.team_id: min(role, cap, key=lambda r: ROLE_RANK[r])}
    return roles


def team_ids(actor: Actor) -> list[int] | None:
    """The ids of the teams the actor can read; ``None`` means every team."""
    roles = team_roles(actor)
    return None if roles is None else list(roles)


def role_in(actor: Actor, team_id: int) -> str | None:
    roles = team_roles(actor)
    if roles is None:
        return Role.ADMIN
    return roles.get(team_id)


def has_role(actor: Actor, team_id: int, needed: str) -> bool:
    role = role_in(actor, team_id)
    return role is not None and ROLE_RANK[role] >= ROLE_RANK[needed]


def require_role(actor: Actor, team_id: int, needed: str) -> None:
    """404 for outsiders, 403 for members below ``needed``."""
    role = role_in(actor, team_id)
    if role is None:
        raise NotFound("Team not found.")
    if ROLE_RANK[role] < ROLE_RANK[needed]:
        raise Forbidden(f"This needs the {needed} role in the team; you have {role}.")


def readable_team_ids(user_pks) -> dict[int, set[int] | None]:
    """Readable team ids per user (session access, no token), for many users
    at once: ``None`` for users deactivated or deleted, an empty set for users
    in no team yet."""
    from django.contrib.auth import get_user_model

    users = dict(get_user_model().objects.filter(pk__in=list(user_pks), is_active=True)
                 .values_list("pk", "is_superuser"))
    readable: dict[int, set[int] | None] = {pk: set() if pk in users else None
                                            for pk in user_pks}
    if any(users.values()):
        every_team = set(Team.objects.values_list("pk", flat=True))
        for pk, is_superuser in users.items():
            if is_superuser:
                readable[pk] = set(every_team)
    members = [pk for pk, is_superuser in users.items() if not is_superuser]
    if members:
        for user_id, team_id in Membership.objects.filter(user_id__in=members).values_list(
                "user_id", "team_id"):
            readable[user_id].add(team_id)
    return readable


def readable(actor: Actor, queryset: QuerySet) -> QuerySet:
    """Restrict ``queryset`` to rows in teams the actor can read."""
    roles = team_roles(actor)
    if roles is None:
        return queryset
    path = TEAM_PATH[queryset.model]
    return queryset.filter(**{f"{path}__in": list(roles)})


def get_for(actor: Actor, queryset: QuerySet, needed: str = Role.VIEWER, **lookup) -> Model:
    """Fetch one row the actor may see; check ``needed`` role for writes."""
    model = queryset.model
    try:
        obj = readable(actor, queryset).get(**lookup)
    except (model.DoesNotExist, ValueError, TypeError):
        raise NotFound(f"{model._meta.verbose_name.capitalize()} not found.") from None
    team_id = _team_id(obj)
    if needed != Role.VIEWER:
        require_role(actor, team_id, needed)
    return obj


def get_team_for(actor: Actor, team_id: int, needed: str = Role.VIEWER) -> Team:
    return get_for(actor, Team.objects.all(), needed, pk=team_id)


def _team_id(obj: Model) -> int:
    path = TEAM_PATH[type(obj)]
    current = obj
    for part in path.replace("__", ".").split("."):
        current = getattr(current, part)
    return current

"""What every verb shares: saving with validation turned into domain errors,
applying a partial change, scheduling a reconcile after commit, and the
lookups verbs in several modules need (a team's policy, the acting user).
Every app's verbs save through here (telemetry's too)."""
from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from .. import effects
from ..audit import Actor
from ..errors import Conflict, Invalid
from ..models import Policy


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


def schedule_reconcile(deployment_id: int) -> None:
    """Reconcile after commit; with the broker down the sweep does it later."""
    effects.enqueue_on_commit("deployments.tasks.reconcile", deployment_id)


def team_policy(team_id: int) -> Policy:
    """The team's policy, made with the defaults if it has none yet."""
    policy, _ = Policy.objects.get_or_create(team_id=team_id)
    return policy


def acting_user(actor: Actor):
    """The user an actor stands for, or ``None`` (a system or budget actor)."""
    return actor.user if actor.user is not None and actor.user.pk else None

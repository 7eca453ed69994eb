"""Governance in the Django admin: teams, members and roles, tokens, targets,
policies, secrets, users; the audit log read-only.

The admin is not a second write path: every add, change and delete here calls
the verb in ``actions`` (or ``telemetry.budgets``), so policy checks, the audit
row (source ``admin``) and the reconcile after commit are the same as from the
API or the UI. A model without a verb is read-only here. When a verb refuses,
the whole submission is rolled back and the form is shown again with the
verb's answer on the field (or row) it names; a refused delete or bulk action
comes back as an error message.
"""
from __future__ import annotations

from . import people, registry  # noqa: F401  (registers the model admins)
from .base import ReadOnlyAdmin, Refused, VerbAdmin, VerbInline, Writes, admin_actor

__all__ = ["ReadOnlyAdmin", "Refused", "VerbAdmin", "VerbInline", "Writes", "admin_actor"]

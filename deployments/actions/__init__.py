"""Every state change is one verb here: atomic, validated, audited, and with
its side effects (reconcile, live events) scheduled after commit.

Callers (API, UI, admin, workers, telemetry) pass the acting :class:`Actor`;
role checks happen in ``access`` before a verb is called, policy checks happen
here. One module per job, all re-exported here so callers write
``actions.create_deployment(...)``:

- ``base``: ``validated_save``, ``apply_changes``, ``schedule_reconcile`` and the
  lookups several verbs share (a team's policy, the acting user);
- ``teams``: teams, members, policy and users;
- ``registry``: agents, versions and targets;
- ``deployments``: desired state — create, update, scale, restart, roll back, delete;
- ``secrets`` and ``tokens``: team secrets and API tokens;
- ``streams``: a stream deployment's dead letters — replay and purge;
- ``batch``: a batch deployment's schedules and job runs.
"""
from __future__ import annotations

from .base import apply_changes, schedule_reconcile, validated_save
from .batch import (
    cancel_job_run,
    create_schedule,
    delete_schedule,
    resume_schedule,
    suspend_schedule,
    trigger_schedule,
    update_schedule,
)
from .deployments import (
    SETTING_CHANGES,
    SPEC_CHANGES,
    create_deployment,
    delete_deployment,
    restart_deployment,
    rollback_deployment,
    scale_deployment,
    update_deployment,
)
from .registry import (
    create_agent,
    create_target,
    create_version,
    delete_agent,
    delete_target,
    delete_version,
    update_agent,
    update_target,
)
from .secrets import create_secret, delete_secret, update_secret
from .streams import purge_dead_letters, replay_dead_letters
from .teams import (
    USER_FIELDS,
    USER_RELATIONS,
    add_member,
    change_member_role,
    create_team,
    create_user,
    delete_team,
    delete_user,
    remove_member,
    set_user_password,
    update_policy,
    update_team,
    update_user,
)
from .tokens import (
    TOKEN_PREFIX,
    authenticate_token,
    create_token,
    hash_token_secret,
    revoke_token,
)

__all__ = [
    "SETTING_CHANGES", "SPEC_CHANGES", "TOKEN_PREFIX", "USER_FIELDS", "USER_RELATIONS",
    "add_member", "apply_changes", "authenticate_token", "cancel_job_run", "change_member_role",
    "create_schedule", "delete_schedule", "resume_schedule", "suspend_schedule",
    "trigger_schedule", "update_schedule",
    "create_agent", "create_deployment", "create_secret", "create_target", "create_team",
    "create_token", "create_user", "create_version", "delete_agent", "delete_deployment",
    "delete_secret", "delete_target", "delete_team", "delete_user", "delete_version",
    "hash_token_secret", "purge_dead_letters", "remove_member", "replay_dead_letters",
    "restart_deployment", "revoke_token",
    "rollback_deployment", "scale_deployment", "schedule_reconcile", "set_user_password",
    "update_agent", "update_deployment", "update_policy", "update_secret", "update_target",
    "update_team", "update_user", "validated_save",
]

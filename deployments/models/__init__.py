"""Hangar's state: the registry (teams, agents, versions, targets), desired
state (deployments and their revisions), observed state (instances, events,
samples) and governance (secrets, tokens, policies, audit). Models guard their
own invariants; verbs that change state across objects live in ``actions``.

One module per part, every model imported here (Django finds the app's models
through this package; its app label is ``deployments``):

- ``teams``: teams, memberships and roles, policies;
- ``registry``: agents, agent versions, targets;
- ``deployments``: deployments, revisions, health;
- ``observed``: instances, deployment events, chart samples;
- ``credentials``: secrets and API tokens;
- ``auditlog``: the append-only audit log;
- ``batch``: a batch deployment's schedules and their job runs;
- ``streams``: a stream deployment's lag samples.
"""
from __future__ import annotations

from .auditlog import AppendOnlyError, AuditEvent, AuditQuerySet
from .batch import (
    ACTIVE_JOB_STATUSES,
    FINISHED_JOB_STATUSES,
    ConcurrencyPolicy,
    JobRun,
    JobStatus,
    JobTrigger,
    Schedule,
    ScheduleOrigin,
    SuspendedReason,
)
from .credentials import SCOPE_ROLE, ApiToken, Secret, TokenScope
from .deployments import (
    HEALTH_SEVERITY,
    AutoscaleSignal,
    Deployment,
    DeploymentState,
    Health,
    Revision,
    RolloutStrategy,
    worst_health,
)
from .observed import DeploymentEvent, DeploymentSample, Instance, InstancePhase
from .registry import Agent, AgentVersion, ImmutableError, Pattern, Target, TargetKind
from .streams import StreamSample
from .teams import ROLE_RANK, Membership, Policy, Role, Team
from .validators import name_validator, slug_validator

__all__ = [
    "ACTIVE_JOB_STATUSES", "FINISHED_JOB_STATUSES", "ConcurrencyPolicy", "JobRun", "JobStatus",
    "JobTrigger", "Schedule", "ScheduleOrigin", "SuspendedReason",
    "HEALTH_SEVERITY", "ROLE_RANK", "SCOPE_ROLE",
    "Agent", "AgentVersion", "ApiToken", "AppendOnlyError", "AuditEvent", "AuditQuerySet",
    "AutoscaleSignal", "Deployment", "DeploymentEvent", "DeploymentSample", "DeploymentState",
    "Health", "ImmutableError", "Instance", "InstancePhase", "Membership", "Pattern", "Policy",
    "Revision", "Role", "RolloutStrategy", "Secret", "StreamSample", "Target", "TargetKind", "Team",
    "TokenScope", "name_validator", "slug_validator", "worst_health",
]

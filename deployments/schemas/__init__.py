"""Request and response shapes for the REST API, one module per resource;
``common`` holds the types every shape (telemetry's too) is built from.
Everything is importable from here: ``from deployments.schemas import Body``."""
from __future__ import annotations

from .common import (
    EARLIEST,
    LATEST,
    Body,
    Changes,
    CostBound,
    Cpu,
    DecimalOut,
    Detail,
    HistoryLimit,
    Id,
    Int,
    KindName,
    LogTail,
    Moment,
    Money,
    PatternName,
    Price,
    Replicas,
    RoleName,
    ScopeName,
    SecretName,
    Slug,
    StateName,
    decimal_in,
    integer,
    plain_decimal,
)
from .deployments import (
    Autoscaling,
    DeploymentIn,
    DeploymentOut,
    DeploymentPatch,
    EventOut,
    InstanceOut,
    RevisionChange,
    RevisionOut,
    RollbackIn,
)
from .governance import AuditOut, SecretIn, SecretOut, SecretPatch, TokenCreated, TokenIn, TokenOut
from .registry import (
    AgentIn,
    AgentOut,
    AgentPatch,
    TargetIn,
    TargetOut,
    TargetPatch,
    VersionIn,
    VersionOut,
)
from .teams import MemberIn, MemberOut, MemberPatch, TeamIn, TeamOut, TeamPatch

__all__ = [
    "EARLIEST", "LATEST", "AgentIn", "AgentOut", "AgentPatch", "AuditOut", "Autoscaling",
    "Body", "Changes", "CostBound", "Cpu", "DecimalOut", "DeploymentIn", "DeploymentOut",
    "DeploymentPatch", "Detail", "EventOut", "HistoryLimit", "Id", "InstanceOut", "Int",
    "KindName", "LogTail", "MemberIn", "MemberOut", "MemberPatch", "Moment", "Money",
    "PatternName", "Price", "Replicas", "RevisionChange", "RevisionOut", "RoleName",
    "RollbackIn", "ScopeName", "SecretIn", "SecretName", "SecretOut", "SecretPatch", "Slug",
    "StateName", "TargetIn", "TargetOut", "TargetPatch", "TeamIn", "TeamOut", "TeamPatch",
    "TokenCreated", "TokenIn", "TokenOut", "VersionIn", "VersionOut", "decimal_in", "integer",
    "plain_decimal",
]

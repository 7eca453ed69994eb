"""Schemas of the edge API (device and fleet)."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from ninja import Field, Schema

from deployments.schemas.common import Body, Id, Moment

Short = Annotated[str, Field(max_length=200)]


# Device API ------------------------------------------------------------------------------

class EnrolIn(Body):
    token: Annotated[str, Field(max_length=200)]
    public_key: Annotated[str, Field(max_length=100, description="base64 of the raw 32-byte "
                                                              "Ed25519 public key")]
    name: Short = "device"
    labels: dict[str, str] = Field(default_factory=dict)


class TeamKey(Schema):
    key_id: str
    public_key: str


class EnrolOut(Schema):
    device_id: int
    device_token: str = Field(description="shown once: every later call sends it as "
                                          "'Authorization: Device <token>'")
    team_keys: list[TeamKey]
    poll_interval_s: int
    jitter_s: int


class BundleRef(Schema):
    digest: str
    size: int
    url: str
    signature: str | None
    key_id: str | None
    version: str
    manifest: dict[str, Any]


class StateOut(Schema):
    device_id: int
    run: bool
    state: str
    bundle: BundleRef | None
    previous_bundle: BundleRef | None
    poll_interval_s: int
    jitter_s: int
    team_keys: list[TeamKey]


class Usage(Schema):
    cpu_percent: float | None = None
    memory_bytes: int | None = None


class Refusal(Schema):
    digest: Annotated[str, Field(max_length=100)]
    reason: Annotated[str, Field(max_length=2000)] = ""


class DeviceStatusIn(Body):
    phase: Annotated[str, Field(max_length=100)] | None = None
    health: Annotated[str, Field(max_length=100)] | None = None
    version: Annotated[str, Field(max_length=100)] | None = None
    digest: Annotated[str, Field(max_length=100)] | None = None
    usage: Usage | None = None
    refused: Annotated[list[Refusal], Field(max_length=100)] = Field(default_factory=list)
    error: Annotated[str, Field(max_length=10000)] | None = None
    buffered: Annotated[int, Field(ge=0, le=2**62)] = 0
    dropped: Annotated[int, Field(ge=0, le=2**62)] = 0


# Fleet API -------------------------------------------------------------------------------

class GroupIn(Body):
    team_id: Id
    name: Annotated[str, Field(min_length=1, max_length=100)]
    deployment_id: Id | None = None


class GroupOut(Schema):
    id: int
    team_id: int
    name: str
    deployment_id: int | None
    bundle_version: str | None = None
    devices: int = 0


class EnrolmentTokenIn(Body):
    group_id: Id
    name: Annotated[str, Field(max_length=100)] = ""
    max_uses: Annotated[int, Field(ge=1, le=100_000)] = 1
    expires_at: Moment | None = None
    expires_in_s: Annotated[int, Field(ge=60, le=366 * 86400)] | None = None


class EnrolmentTokenOut(Schema):
    id: int
    team_id: int
    group_id: int
    name: str
    prefix: str
    max_uses: int
    uses_left: int
    expires_at: datetime
    revoked_at: datetime | None
    created_at: datetime


class EnrolmentTokenCreated(EnrolmentTokenOut):
    token: str = Field(description="shown once; Hangar keeps only its hash")


class DeviceOut(Schema):
    id: int
    team_id: int
    group_id: int
    group: str
    name: str
    labels: dict[str, str]
    state: str
    online: bool
    last_seen: datetime | None
    phase: str
    health: str
    version: str
    digest: str
    last_error: str
    bundle_version: str | None
    reported: dict[str, Any]
    enrolled_at: datetime


class DeviceEventOut(Schema):
    at: datetime
    kind: str
    message: str


class BundleOut(Schema):
    id: int
    team_id: int
    digest: str
    version: str
    size: int
    manifest: dict[str, Any]
    uploaded_at: datetime
    key_ids: list[str]


class KeyOut(Schema):
    id: int
    team_id: int
    key_id: str
    public_key: str
    status: str
    created_at: datetime
    retired_at: datetime | None


class KeyTeamIn(Body):
    team_id: Id


class RolloutIn(Body):
    group_id: Id
    bundle_id: Id
    waves: list[dict[str, Any]] = Field(
        description='e.g. [{"count": 2}, {"percent": 50}, {"percent": 100}]; the last wave '
                    "takes every device left")
    health_threshold: Annotated[int, Field(ge=1, le=100)] = 90
    failure_threshold: Annotated[int, Field(ge=1, le=100)] = 20


class WaveOut(Schema):
    index: int
    status: str
    total: int
    healthy: int
    failed: int
    pending: int
    started_at: datetime | None
    finished_at: datetime | None


class RolloutOut(Schema):
    id: int
    team_id: int
    group_id: int
    bundle_version: str
    previous_version: str | None
    status: str
    reason: str
    current_wave: int
    health_threshold: int
    failure_threshold: int
    waves: list[WaveOut]
    created_at: datetime
    finished_at: datetime | None

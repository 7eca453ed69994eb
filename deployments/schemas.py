"""Request and response shapes for the REST API."""
from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Annotated, Any, Literal

from ninja import Field, Schema
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BeforeValidator,
    ConfigDict,
    PlainSerializer,
    StringConstraints,
    TypeAdapter,
    WithJsonSchema,
    model_validator,
)


def _integer(value: Any) -> Any:
    """JSON's integers: ``3`` and ``3.0``, never ``true`` (bodies are strict, so
    ``"3"`` is refused there; query and path text is still read as a number)."""
    if isinstance(value, bool):
        raise ValueError("Give an integer.")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def integer(**bounds) -> Any:
    """An integer type with bounds (``ge``/``le``) that refuses booleans."""
    return Annotated[int, Field(**bounds), BeforeValidator(_integer)]


Int = integer()
Id = integer(ge=1, le=2**62)
Slug = Annotated[str, StringConstraints(pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
SecretName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]
PatternName = Literal["batch", "stream", "realtime", "edge"]
KindName = Literal["docker", "kubernetes", "local", "edge"]
RoleName = Literal["viewer", "operator", "admin"]
StateName = Literal["active", "paused", "stopped"]
ScopeName = Literal["read", "deploy", "admin"]
Replicas = integer(ge=0, le=1000)
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)


def _within_time(value: datetime) -> datetime:
    """In UTC, and clamped to years 1970–9000: nothing Hangar stores is outside,
    so a filter bound beyond them selects the same rows, and date arithmetic
    on it cannot overflow."""
    return min(max(value, EARLIEST), LATEST).astimezone(UTC)


_DATETIME = TypeAdapter(AwareDatetime)


def _rfc3339(value: Any) -> Any:
    """Only a date-time text (a number would be read as a Unix time)."""
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not re.match(r"^\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d", value):
        raise ValueError("Give an RFC 3339 date-time, e.g. 2025-01-31T12:00:00Z.")
    return _DATETIME.validate_python(value)


# A point in time given by a client: with its UTC offset (RFC 3339 date-time).
Moment = Annotated[AwareDatetime, BeforeValidator(_rfc3339), AfterValidator(_within_time)]
LogTail = Annotated[int, Field(ge=0, le=10_000, description="lines from the end")]
HistoryLimit = Annotated[integer(ge=1, le=100), Field(
    description="revisions kept (besides any an instance still runs)")]


def plain_decimal(value: Decimal) -> str:
    """A decimal as a plain number in a string, whoever wrote it: no exponent
    (``0E-12`` is ``"0"``) and no trailing zeros (``0.500`` is ``"0.5"``)."""
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "") else text


def decimal_in(pattern: str, minimum: str, maximum: str, places: int, description: str = ""):
    """A decimal a client sends: a JSON string matching ``pattern`` (which
    encodes the whole range, so a valid-looking string is never refused), or a
    JSON number from ``minimum`` to ``maximum``, rounded to ``places`` decimals
    (a binary float carries no more precision than that)."""
    step = Decimal(1).scaleb(-places)

    def parse(value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("Give a number or a decimal string.")
        if isinstance(value, int | float):
            number = Decimal(str(value))
            if not number.is_finite() or not Decimal(minimum) <= number <= Decimal(maximum):
                raise ValueError(f"Give a number from {minimum} to {maximum}.")
            return number.quantize(step, rounding=ROUND_HALF_EVEN)
        if isinstance(value, str) and not re.fullmatch(pattern, value):
            raise ValueError(f"Give a decimal from {minimum} to {maximum} with at most "
                             f"{places} decimals, e.g. \"{minimum}\".")
        return Decimal(value) if isinstance(value, str) else value

    return Annotated[Decimal, BeforeValidator(parse), WithJsonSchema({
        "anyOf": [{"type": "string", "pattern": pattern},
                  {"type": "number", "minimum": float(minimum), "maximum": float(maximum)}],
        **({"description": description} if description else {}),
    }, mode="validation")]


Cpu = decimal_in(r"^(?:(?:[1-9][0-9]?|1[0-9][0-9]|2[0-4][0-9]|25[0-5])(?:\.[0-9]{1,3})?"
                 r"|256(?:\.0{1,3})?|0\.(?:[1-9][0-9]{0,2}|0[1-9][0-9]?))$",
                 "0.01", "256", 3, "cores")
Price = decimal_in(r"^(?:0|[1-9][0-9]{0,3})(?:\.[0-9]{1,6})?$", "0", "9999.99", 6,
                   "USD per hour")
Money = decimal_in(r"^(?:[1-9][0-9]{0,11}(?:\.[0-9]{1,2})?|0\.(?:0[1-9]|[1-9][0-9]?))$",
                   "0.01", "999999999999", 2, "USD")
CostBound = decimal_in(r"^(?:0|[1-9][0-9]{0,11})(?:\.[0-9]{1,12})?$", "0", "999999999999", 12,
                       "USD")


# Every decimal the API answers with is rendered by ``plain_decimal``.
DecimalOut = Annotated[
    Decimal,
    PlainSerializer(plain_decimal, return_type=str),
    WithJsonSchema({"type": "string", "pattern": r"^-?(0|[1-9][0-9]*)(\.[0-9]*[1-9])?$",
                    "examples": ["0.5"]}, mode="serialization"),
]


def _omitted_means_unchanged(schema: dict, model) -> None:
    for prop in schema.get("properties", {}).values():
        if prop.get("default", ...) is None and not _allows_null(prop):
            del prop["default"]


def _allows_null(prop: dict) -> bool:
    return prop.get("type") == "null" or any(_allows_null(p) for p in prop.get("anyOf", ()))


class Body(Schema):
    """A request body: a JSON object whose values have the types the schema
    says (strict: ``0`` is not ``false``, ``"1"`` is not ``1``)."""

    model_config = ConfigDict(strict=True)

    @model_validator(mode="wrap")
    @classmethod
    def _an_object(cls, data: Any, handler) -> Any:
        # Schemas read attributes too (from_attributes), so a JSON array would
        # otherwise pass as "no changes".
        if data is None or isinstance(data, list | str | int | float):
            raise ValueError("Give a JSON object.")
        return handler(data)


class Changes(Body):
    """A partial update: a field left out stays as it is. ``null`` is a value
    only where the field can be empty (typed ``X | None``); elsewhere it is
    refused with a 422 naming the field, as any other wrong type."""

    model_config = ConfigDict(json_schema_extra=_omitted_means_unchanged)


class Detail(Schema):
    detail: Any = Field(..., description="a message, or the errors per field")


class TeamIn(Body):
    name: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    slug: Slug


class TeamPatch(Changes):
    name: Annotated[str, StringConstraints(min_length=1, max_length=100)] = None


class TeamOut(Schema):
    id: int
    name: str
    slug: str
    created_at: datetime
    role: str | None = None


class MemberIn(Body):
    username: Annotated[str, StringConstraints(min_length=1, max_length=150)]
    role: RoleName = "viewer"


class MemberPatch(Body):
    role: RoleName


class MemberOut(Schema):
    id: int
    team_id: int
    username: str = Field(..., alias="user.username")
    role: str
    created_at: datetime


class AgentIn(Body):
    team_id: Id
    slug: Slug
    name: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    description: Annotated[str, StringConstraints(max_length=10_000)] = ""
    pattern: PatternName


class AgentPatch(Changes):
    name: Annotated[str, StringConstraints(min_length=1, max_length=100)] = None
    description: Annotated[str, StringConstraints(max_length=10_000)] = None


class AgentOut(Schema):
    id: int
    team_id: int
    slug: str
    name: str
    description: str
    pattern: str
    created_at: datetime
    updated_at: datetime


class VersionIn(Body):
    """What to run: an image, a bundle or a command (at least one)."""

    model_config = ConfigDict(json_schema_extra={"anyOf": [
        {"required": ["image"], "properties": {"image": {"minLength": 1}}},
        {"required": ["bundle"], "properties": {"bundle": {"minLength": 1}}},
        {"required": ["command"], "properties": {"command": {"minItems": 1}}},
    ]})

    image: Annotated[str, StringConstraints(max_length=255)] = ""
    bundle: Annotated[str, StringConstraints(max_length=255)] = ""
    command: list[Annotated[str, StringConstraints(max_length=4096)]] = Field(
        default_factory=list, max_length=256)
    env: dict[str, Annotated[str, StringConstraints(max_length=32_768)]] = Field(
        default_factory=dict)
    secret_refs: list[SecretName] = Field(default_factory=list, max_length=256)
    cpu: Cpu = Decimal("0.5")
    memory_mb: integer(ge=16, le=1024 * 1024) = 256
    port: integer(ge=1, le=65535) | None = None
    health: dict[str, Any] = Field(default_factory=dict)
    model_settings: dict[str, Any] = Field(default_factory=dict)
    pattern_settings: dict[str, Any] = Field(default_factory=dict)


class VersionOut(Schema):
    id: int
    agent_id: int
    number: int
    digest: str
    image: str
    bundle: str
    command: list[str]
    env: dict[str, str]
    secret_refs: list[str]
    cpu: DecimalOut
    memory_mb: int
    port: int | None
    health: dict[str, Any]
    model_settings: dict[str, Any]
    pattern_settings: dict[str, Any]
    created_at: datetime


class TargetIn(Body):
    team_id: Id
    name: Slug
    kind: KindName
    connection: dict[str, Any] = Field(default_factory=dict)
    labels: dict[str, Annotated[str, StringConstraints(max_length=255)]] = Field(
        default_factory=dict)
    price_cpu_hour: Price = Decimal(0)
    price_gib_hour: Price = Decimal(0)


class TargetPatch(Changes):
    name: Slug = None
    connection: dict[str, Any] = None
    labels: dict[str, Annotated[str, StringConstraints(max_length=255)]] = None
    price_cpu_hour: Price = None
    price_gib_hour: Price = None


class TargetOut(Schema):
    id: int
    team_id: int
    name: str
    kind: str
    connection: dict[str, Any]
    labels: dict[str, str]
    price_cpu_hour: DecimalOut
    price_gib_hour: DecimalOut
    status: str
    status_reason: str
    last_probe_at: datetime | None


class Autoscaling(Changes):
    autoscale_min: Replicas | None = None
    autoscale_max: Replicas | None = None
    autoscale_signal: Literal["", "cpu", "inflight", "lag"] = Field(
        None, description='"" turns autoscaling off')
    autoscale_target: Annotated[float, Field(gt=0, le=1e9)] | None = None
    rollout_strategy: Literal["rolling", "recreate"] = None


class DeploymentIn(Autoscaling):
    agent_id: Id
    target_id: Id
    version_id: Id | None = Field(None, description="defaults to the agent's latest version")
    environment: Slug = "production"
    replicas: Replicas = 1
    state: StateName = "active"
    revision_history_limit: HistoryLimit = 10


class DeploymentPatch(Autoscaling):
    replicas: Replicas = None
    state: StateName = None
    version_id: Id = None
    revision_history_limit: HistoryLimit = None


class DeploymentOut(Schema):
    id: int
    team_id: int = Field(..., alias="agent.team_id")
    agent_id: int
    version_id: int
    version_number: int = Field(..., alias="version.number")
    revision: int | None = Field(None, description="number of the revision instances should run")
    revision_history_limit: int
    restarted_at: datetime | None
    target_id: int
    environment: str
    replicas: int
    state: str
    autoscale_min: int | None
    autoscale_max: int | None
    autoscale_signal: str
    autoscale_target: float | None
    rollout_strategy: str
    generation: int
    observed_generation: int
    health: str
    health_reason: str
    created_at: datetime
    updated_at: datetime

    @staticmethod
    def resolve_revision(obj) -> int | None:
        return obj.revision.number if obj.revision_id else None


class InstanceOut(Schema):
    id: int
    name: str
    version_id: int | None
    revision: int | None = Field(None, description="number of the revision it runs")
    generation: int
    runtime_id: str
    host: str
    address: str
    phase: str
    health: str
    health_reason: str
    restarts: int
    started_at: datetime | None
    updated_at: datetime

    @staticmethod
    def resolve_revision(obj) -> int | None:
        return obj.revision.number if obj.revision_id else None


class SecretIn(Body):
    team_id: Id
    name: SecretName
    value: Annotated[str, StringConstraints(min_length=1, max_length=65_536)]


class SecretPatch(Body):
    value: Annotated[str, StringConstraints(min_length=1, max_length=65_536)]


class SecretOut(Schema):
    id: int
    team_id: int
    name: str
    created_at: datetime
    updated_at: datetime


class TokenIn(Body):
    team_id: Id
    name: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    scope: ScopeName = "read"
    expires_at: Moment | None = None


class TokenOut(Schema):
    id: int
    team_id: int
    name: str
    prefix: str
    scope: str
    username: str = Field(..., alias="user.username")
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None
    created_at: datetime


class TokenCreated(TokenOut):
    token: str = Field(..., description="shown once; store it now")


class AuditOut(Schema):
    id: int
    at: datetime
    actor_label: str
    team_id: int | None
    action: str
    object_type: str
    object_id: str
    object_repr: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    source: str
    source_ip: str | None


class EventOut(Schema):
    id: int
    at: datetime
    type: str
    reason: str
    message: str
    instance: str


class RollbackIn(Changes):
    model_config = {"extra": "forbid"}

    revision: Id | None = Field(
        None, description="revision number to re-apply; defaults to the newest earlier "
                          "revision that runs something else than the current one")


class RevisionChange(Schema):
    field: str = Field(..., description="dotted path in the spec, e.g. env.LOG_LEVEL")
    change: Literal["added", "removed", "changed"]
    text: str = Field(..., description="the change in words")
    before: Any = None
    after: Any = None


class RevisionOut(Schema):
    number: int
    digest: str
    version_id: int | None = Field(..., description="empty once the version was deleted")
    version_number: int | None
    cause: str
    actor: str
    created_at: datetime
    current: bool
    instances: int = Field(..., description="instances running this revision now")
    previous: int | None = Field(..., description="the revision `changes` compare with")
    changes: list[RevisionChange]
    spec: dict[str, Any] = Field(..., description="the resolved spec; secrets as fingerprints")

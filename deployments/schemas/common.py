"""The building blocks of every request and response shape (telemetry's too):
bounded integers, names, times and decimals, and the strict ``Body`` and
partial ``Changes`` bases."""
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

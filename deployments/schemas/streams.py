"""Dead letters of a stream deployment: what one is, a page of them, and the
selection a replay or a purge acts on."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from ninja import Field, Schema
from pydantic import StringConstraints, model_validator

from .common import Body, integer

# A message id in the broker: Redis "1733101234567-0", a JetStream sequence "42".
MessageId = Annotated[str, StringConstraints(pattern=r"^[0-9]{1,20}(-[0-9]{1,20})?$")]
DeadLetterLimit = Annotated[integer(ge=1, le=500), Field(description="dead letters per page")]


class DeadLetterOut(Schema):
    id: str = Field(..., description="the dead letter's id in the dead-letter stream")
    at: datetime = Field(..., description="when it was dead-lettered")
    source_id: str = Field(..., description="the message's id in the source stream")
    source_stream: str
    group: str
    input: str
    fields: dict[str, Any] = Field(..., description="every field the message had")
    error: str = Field(..., description="the consumer's last error")
    deliveries: int = Field(..., description="deliveries before it was given up")
    instance: str = Field(..., description="the consumer that gave up")


class DeadLetterPage(Schema):
    items: list[DeadLetterOut]
    count: int = Field(..., description="dead letters in all")
    next: str | None = Field(None, description="pass as `before` for the next (older) page")


class DeadLetterSelection(Body):
    """Either `ids` (one or more dead-letter ids) or `"all": true` (every dead
    letter there is when the request arrives) — exactly one of them."""

    model_config = {"extra": "forbid"}

    ids: list[MessageId] | None = Field(None, min_length=1, max_length=500)
    all: Literal[True] | None = None

    @model_validator(mode="after")
    def _one_of(self):
        if (self.ids is None) == (self.all is None):
            raise ValueError("Give either ids (a list of dead-letter ids) or \"all\": true.")
        return self


class ReplayOut(Schema):
    replayed: int
    ids: list[str] = Field(..., description="the dead letters moved back to the source")
    new_ids: list[str] = Field(..., description="their new ids in the source, in order")
    missing: list[str] = Field(..., description="asked for, but no longer dead letters")


class PurgeOut(Schema):
    purged: int

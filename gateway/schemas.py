"""Schemas of the gateway-key API (``/api/v1/gateway-keys``)."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated

from ninja import Field, Schema
from pydantic import StringConstraints

from deployments.schemas.common import Body, Id, Slug, integer

Limit = integer(ge=1, le=1_000_000)
ExpiresIn = integer(ge=60, le=10 * 366 * 86400)


class GatewayKeyIn(Body):
    team_id: Id
    name: Annotated[str, StringConstraints(min_length=1, max_length=100,
                                           pattern=r"^[^\x00]*[^ \t\r\n\x00][^\x00]*$")]
    agents: Annotated[list[Slug], Field(max_length=100, description=(
        "slugs of the team's agents it may call; empty: all of them"))] = []
    rate_per_s: Limit | None = Field(None, description="requests per second (default: the "
                                                       "gateway's HANGAR_GATEWAY_RATE_PER_S)")
    concurrent: Limit | None = Field(None, description="requests in flight at once (default: "
                                                       "HANGAR_GATEWAY_CONCURRENT)")
    expires_in_s: ExpiresIn | None = Field(
        None, description="seconds from now until it expires; none: never")


class GatewayKeyOut(Schema):
    id: int
    team_id: int
    name: str
    prefix: str = Field(description="the key starts hgk_<prefix>_")
    agents: list[str]
    rate_per_s: int | None
    concurrent: int | None
    expires_at: datetime | None
    revoked_at: datetime | None
    created_at: datetime
    active: bool = Field(alias="is_active")


class GatewayKeyCreated(GatewayKeyOut):
    key: str = Field(description="shown once; Hangar keeps only its hash")

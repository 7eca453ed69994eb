"""Teams and their members."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated

from ninja import Field, Schema
from pydantic import StringConstraints

from .common import Body, Changes, RoleName, Slug


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

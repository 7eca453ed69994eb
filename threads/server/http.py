"""A request to the threads API, an answer short of the route's own, and the
route table the server dispatches on (``route`` marks a server method)."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

from deployments.errors import Invalid
from gateway.callers import Caller


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    caller: Caller
    team_id: int
    team_slug: str
    base: str  # absolute URL of /lg/<team>
    receive: object
    params: dict

    def json(self):
        if not self.body:
            return {}
        try:
            value = json.loads(self.body)
        except ValueError as exc:
            raise Invalid(f"the body is not JSON: {exc}") from None
        if not isinstance(value, dict):
            raise Invalid("the body must be a JSON object")
        return value

    def arg(self, name: str, default=None):
        values = self.query.get(name)
        return values[-1] if values else default


class Answer(Exception):
    def __init__(self, status: int, payload=None, headers: dict | None = None):
        super().__init__(status)
        self.status, self.payload, self.headers = status, payload, headers or {}


ROUTES: list[tuple[str, re.Pattern, str]] = []


def route(method: str, pattern: str):
    regex = re.compile("^" + re.sub(r"{(\w+)}", r"(?P<\1>[^/]+)", pattern) + "$")

    def mark(fn):
        ROUTES.append((method, regex, fn.__name__))
        return fn
    return mark


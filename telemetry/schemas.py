"""Request and response shapes of the telemetry API."""
from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from ninja import Field, Schema
from pydantic import StringConstraints

from deployments.schemas import Body, Changes, DecimalOut, Id, Money, integer

from .models import BudgetEvent, Run, span_hex

ActionName = Literal["alert", "pause", "scale_to_zero"]


class RunOut(Schema):
    id: int
    team_id: int
    agent_id: int
    deployment_id: int
    version_id: int | None
    instance: str
    trace_id: str
    root_span_id: str | None
    name: str
    status: str
    error: str
    started_at: datetime | None
    ended_at: datetime | None
    duration_ms: float | None
    input_tokens: int
    output_tokens: int
    llm_spans: int
    span_count: int
    model: str
    cost_usd: DecimalOut | None = Field(
        ..., description="LLM cost; null when a model had no known price (see cost_status)")
    priced_cost_usd: DecimalOut = Field(..., description="cost of the LLM calls that were priced")
    cost_status: Literal["none", "priced", "partial", "unknown"]

    @staticmethod
    def resolve_trace_id(obj: Run) -> str:
        return obj.trace_id.hex

    @staticmethod
    def resolve_root_span_id(obj: Run) -> str | None:
        return span_hex(obj.root_span_id)

    @staticmethod
    def resolve_cost_usd(obj: Run) -> Decimal | None:
        return obj.known_cost

    @staticmethod
    def resolve_priced_cost_usd(obj: Run) -> Decimal:
        return obj.cost_usd


class SpanNode(Schema):
    span_id: str
    parent_span_id: str | None
    name: str
    kind: str
    start: datetime
    offset_ms: float = Field(..., description="from the run's start")
    duration_ms: float
    status: str
    status_message: str
    instance: str
    attributes: dict[str, Any]
    events: list[dict[str, Any]]
    links: list[dict[str, Any]]
    llm: bool
    model: str | None
    input_tokens: int | None
    output_tokens: int | None
    cost_usd: DecimalOut | None
    cost_unknown: bool
    truncated: bool = Field(..., description="a value was cut to the ingest limits")
    missing_parent: bool = Field(..., description="its parent span never arrived")
    children: list[SpanNode]


SpanNode.model_rebuild()


class TraceOut(Schema):
    run: RunOut
    trace_id: str
    span_count: int
    truncated: bool = Field(..., description="more spans than the answer holds")
    spans: list[SpanNode]


class CostBucket(Schema):
    at: datetime
    llm_usd: DecimalOut
    compute_usd: DecimalOut
    total_usd: DecimalOut
    runs: int
    unpriced_runs: int
    input_tokens: int
    output_tokens: int


class CostTotals(Schema):
    llm_usd: DecimalOut
    compute_usd: DecimalOut
    total_usd: DecimalOut
    runs: int
    unpriced_runs: int = Field(..., description="runs with an LLM call of unknown price "
                                                "(their cost is not in llm_usd)")
    input_tokens: int
    output_tokens: int


class CostsOut(Schema):
    since: datetime
    until: datetime
    bucket: str
    team_id: int | None
    agent_id: int | None
    deployment_id: int | None
    totals: CostTotals
    series: list[CostBucket]


class Threshold(Body):
    percent: integer(ge=1, le=1000)
    action: ActionName


# An http(s) URL with a host name, localhost or an IPv4 address (a subset of
# what Django's URLValidator accepts, so the schema and the model agree), or "".
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
WebhookUrl = Annotated[str, StringConstraints(
    max_length=2000,
    pattern=rf"^(?:https?://(?:localhost|{_OCTET}(?:\.{_OCTET}){{3}}"
            r"|(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63})"
            r"(?::[0-9]{1,5})?(?:/[!-~]*)?)?$")]


class BudgetIn(Body):
    team_id: Id
    agent_id: Id | None = Field(None, description="empty: the whole team")
    name: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    amount_usd: Money = Field(..., description="per calendar month (UTC)")
    thresholds: list[Threshold] = Field(
        default_factory=lambda: [Threshold(percent=80, action="alert"),
                                 Threshold(percent=100, action="alert")],
        min_length=1, max_length=10)
    webhook_url: WebhookUrl = ""
    enabled: bool = True


class BudgetPatch(Changes):
    name: Annotated[str, StringConstraints(min_length=1, max_length=100)] = None
    amount_usd: Money = None
    thresholds: list[Threshold] = Field(None, min_length=1, max_length=10)
    webhook_url: WebhookUrl = None
    enabled: bool = None


class BudgetOut(Schema):
    id: int
    team_id: int
    agent_id: int | None
    name: str
    amount_usd: DecimalOut
    thresholds: list[Threshold]
    has_webhook: bool = Field(..., description="the URL itself is never shown again")
    enabled: bool
    month: date
    spent_usd: DecimalOut = Field(..., description="this month, LLM + compute")
    percent: float
    created_at: datetime
    updated_at: datetime


class BudgetEventOut(Schema):
    id: int
    budget_id: int
    team_id: int
    month: date
    percent: int
    action: str
    amount_usd: DecimalOut
    spent_usd: DecimalOut
    at: datetime
    affected: list[dict[str, Any]]
    webhook_status: str
    reverted_at: datetime | None
    reverted_by: str | None

    @staticmethod
    def resolve_reverted_by(obj: BudgetEvent) -> str | None:
        return obj.reverted_by.get_username() if obj.reverted_by_id else None

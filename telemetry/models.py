"""Telemetry state: spans (high volume, append-only, day-partitioned on
PostgreSQL), runs derived from root spans, compute cost accrual, budgets.

Rows here refer to teams, agents, deployments and versions without database
constraints (``db_constraint=False``, ``DO_NOTHING``): cost history must
survive the deletion of what produced it (a budget cannot be reset by deleting
and re-creating a deployment), and deleting a deployment must not cascade into
millions of span rows. Retention removes old rows instead.
"""
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator, URLValidator
from django.db import models
from django.utils import timezone

from deployments.access import register_team_path
from deployments.crypto import EncryptedTextField
from deployments.models import Agent, AgentVersion, Deployment, Instance, Target, Team

# Span.flags bits.
FLAG_ROOT = 1  # no parent, or a remote parent: the span starts a run
FLAG_LLM = 2  # carries gen_ai usage (tokens) and is priced
FLAG_COST_UNKNOWN = 4  # an LLM span whose model has no known price
FLAG_TRUNCATED = 8  # an attribute, event or name was cut to the ingest limits

SPAN_KINDS = {0: "unspecified", 1: "internal", 2: "server", 3: "client", 4: "producer",
              5: "consumer"}
STATUS_CODES = {0: "unset", 1: "ok", 2: "error"}

COST = {"max_digits": 24, "decimal_places": 12}


def _untied(model, **kwargs) -> models.ForeignKey:
    """A reference that keeps pointing at a deleted row (history outlives it)."""
    return models.ForeignKey(model, on_delete=models.DO_NOTHING, db_constraint=False,
                             db_index=False, related_name="+", **kwargs)


class Span(models.Model):
    """One OpenTelemetry span as received. Written in bulk by ``storage``.

    ``data`` is the span's OTLP protobuf encoding (attributes, events, links,
    status) after the ingest limits were applied; the columns beside it are what
    queries need. Times are Unix nanoseconds, as in OTLP. On PostgreSQL the
    table is partitioned by day on ``start_ns`` (see migration 0001), which is
    why the start is part of the key.
    """

    pk = models.CompositePrimaryKey("trace_id", "span_id", "start_ns")
    trace_id = models.UUIDField()
    span_id = models.BigIntegerField()
    start_ns = models.BigIntegerField()
    parent_span_id = models.BigIntegerField(null=True, blank=True)
    deployment = _untied(Deployment)
    duration_ns = models.BigIntegerField()
    name = models.TextField()
    kind = models.SmallIntegerField(default=0)
    status_code = models.SmallIntegerField(default=0)
    instance = models.TextField(blank=True)
    model = models.TextField(null=True, blank=True)
    input_tokens = models.BigIntegerField(null=True, blank=True)
    output_tokens = models.BigIntegerField(null=True, blank=True)
    cost_usd = models.DecimalField(null=True, blank=True, **COST)
    flags = models.SmallIntegerField(default=0)
    error = models.TextField(null=True, blank=True, help_text="root spans with an error status")
    data = models.BinaryField()

    class Meta:
        ordering = ["start_ns"]

    def __str__(self) -> str:
        return f"{self.name} ({self.trace_id.hex}/{span_hex(self.span_id)})"

    @property
    def start(self) -> datetime:
        return ns_to_datetime(self.start_ns)

    @property
    def is_llm(self) -> bool:
        return bool(self.flags & FLAG_LLM)


def span_hex(span_id: int | None) -> str | None:
    """The 16-hex-digit form of a span id stored as a signed 64-bit integer."""
    if span_id is None:
        return None
    return (span_id & 0xFFFF_FFFF_FFFF_FFFF).to_bytes(8, "big").hex()


def span_int(hex_id: str) -> int:
    return int.from_bytes(bytes.fromhex(hex_id), "big", signed=True)


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def ns_to_datetime(ns: int) -> datetime:
    return EPOCH + timedelta(microseconds=ns // 1000)


def datetime_to_ns(at: datetime) -> int:
    delta = at - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


class RunStatus(models.TextChoices):
    OK = "ok", "OK"
    ERROR = "error", "Error"
    INCOMPLETE = "incomplete", "Incomplete"  # spans seen, root span not (yet)


class Run(models.Model):
    """One unit of agent work, derived from the root span of a trace.

    Rows are upserted as spans arrive, in any order: children add their tokens
    and cost; the root fills in name, status, timings and error. Until the root
    arrives the run is ``incomplete`` and not listed. On PostgreSQL a trigger on
    the span table does this in the statement that inserts the spans (see
    migration 0001), so exactly the spans stored are counted, however they were
    written; elsewhere ``storage`` does it with the ORM.
    """

    team = _untied(Team)
    agent = _untied(Agent)
    deployment = _untied(Deployment)
    version = _untied(AgentVersion, null=True, blank=True)
    instance = models.CharField(max_length=255, blank=True)
    trace_id = models.UUIDField()
    root_span_id = models.BigIntegerField(null=True, blank=True)
    name = models.TextField(blank=True)
    status = models.CharField(max_length=16, choices=RunStatus.choices,
                              default=RunStatus.INCOMPLETE)
    error = models.TextField(blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    duration_ms = models.FloatField(null=True, blank=True)
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    llm_spans = models.IntegerField(default=0)
    span_count = models.IntegerField(default=0)
    model = models.TextField(blank=True)
    cost_usd = models.DecimalField(default=Decimal(0), **COST,
                                   help_text="sum over the priced LLM spans")
    unpriced_spans = models.IntegerField(
        default=0, help_text="LLM spans whose model has no known price")
    first_seen_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-started_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["deployment", "trace_id"],
                                    name="run_deployment_trace_unique"),
        ]
        indexes = [
            models.Index(fields=["deployment", "-started_at"], name="run_deployment_started"),
            models.Index(fields=["team", "started_at"], name="run_team_started"),
            models.Index(fields=["agent", "started_at"], name="run_agent_started"),
        ]

    def __str__(self) -> str:
        return f"run {self.pk} {self.name} ({self.status})"

    @property
    def cost_status(self) -> str:
        """``none`` (no LLM call), ``priced``, ``unknown`` or ``partial``."""
        if not self.llm_spans:
            return "none"
        if not self.unpriced_spans:
            return "priced"
        return "unknown" if self.unpriced_spans >= self.llm_spans else "partial"

    @property
    def known_cost(self) -> Decimal | None:
        """The run's LLM cost, or None when any LLM span could not be priced."""
        return None if self.unpriced_spans else self.cost_usd

    @property
    def trace_hex(self) -> str:
        return self.trace_id.hex


class ComputeCost(models.Model):
    """Compute cost accrued per instance per hour: seconds × the target's prices."""

    team = _untied(Team)
    agent = _untied(Agent)
    deployment = _untied(Deployment)
    target = _untied(Target, null=True, blank=True)
    instance = models.CharField(max_length=255)
    hour = models.DateTimeField()
    seconds = models.FloatField(default=0)
    cpu = models.DecimalField(max_digits=6, decimal_places=3)
    memory_mb = models.PositiveIntegerField()
    cost_usd = models.DecimalField(default=Decimal(0), **COST)

    class Meta:
        ordering = ["-hour"]
        constraints = [
            models.UniqueConstraint(fields=["deployment", "instance", "hour"],
                                    name="computecost_instance_hour_unique"),
        ]
        indexes = [
            models.Index(fields=["team", "hour"], name="computecost_team_hour"),
            models.Index(fields=["agent", "hour"], name="computecost_agent_hour"),
        ]

    def __str__(self) -> str:
        return f"{self.instance} {self.hour:%Y-%m-%d %H:00} ${self.cost_usd}"


class ComputeCursor(models.Model):
    """How far an instance's compute time has been accrued (compare-and-set)."""

    instance = models.OneToOneField(Instance, on_delete=models.CASCADE, related_name="+")
    accrued_until = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.instance_id} until {self.accrued_until}"


class BudgetAction(models.TextChoices):
    ALERT = "alert", "Alert"
    PAUSE = "pause", "Pause deployments"
    SCALE_TO_ZERO = "scale_to_zero", "Scale deployments to zero"


class WebhookState(models.TextChoices):
    """Where a budget event's notification is; a worker claims it by moving it
    to ``sending`` with a compare-and-set, so one send is in flight at a time."""

    NONE = "", "No webhook"
    PENDING = "pending", "Pending"
    SENDING = "sending", "Sending"
    RETRYING = "retrying", "Retrying"
    SENT = "sent", "Sent"
    FAILED = "failed", "Failed"
    REFUSED = "refused", "Refused"


def validate_thresholds(value) -> None:
    if not isinstance(value, list) or not 1 <= len(value) <= 10:
        raise ValidationError("Give between 1 and 10 thresholds.")
    seen = set()
    for item in value:
        if not isinstance(item, dict) or set(item) != {"percent", "action"}:
            raise ValidationError('Each threshold is {"percent": N, "action": "alert|pause|'
                                  'scale_to_zero"}.')
        percent, action = item["percent"], item["action"]
        if not isinstance(percent, int) or isinstance(percent, bool) or not 1 <= percent <= 1000:
            raise ValidationError("A threshold's percent is a whole number from 1 to 1000.")
        if action not in BudgetAction.values:
            raise ValidationError(
                f"Unknown action {action!r}: use {', '.join(BudgetAction.values)}.")
        if percent in seen:
            raise ValidationError(f"Two thresholds at {percent}%.")
        seen.add(percent)


def default_thresholds() -> list[dict]:
    return [{"percent": 80, "action": "alert"}, {"percent": 100, "action": "alert"}]


class Budget(models.Model):
    """A monthly spending limit for a team, or one agent of it, with actions
    taken when spend crosses a percentage of the amount."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="budgets")
    agent = models.ForeignKey(Agent, null=True, blank=True, on_delete=models.CASCADE,
                              related_name="budgets", help_text="empty: the whole team")
    name = models.CharField(max_length=100)
    amount_usd = models.DecimalField(max_digits=14, decimal_places=2,
                                     validators=[MinValueValidator(Decimal("0.01"))])
    thresholds = models.JSONField(default=default_thresholds, validators=[validate_thresholds])
    webhook_url = EncryptedTextField(
        blank=True, default="", validators=[URLValidator(schemes=["http", "https"])],
        help_text="receives a JSON POST for every threshold crossed; may hold a secret, "
                  "so it is stored encrypted and never shown again")
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["team__slug", "name"]
        constraints = [
            models.UniqueConstraint(fields=["team", "name"], name="budget_team_name_unique"),
        ]

    def __str__(self) -> str:
        scope = f"{self.team.slug}/{self.agent.slug}" if self.agent_id else self.team.slug
        return f"{self.name} ({scope}, ${self.amount_usd}/month)"

    def clean(self) -> None:
        if self.agent_id and self.team_id and self.agent.team_id != self.team_id:
            raise ValidationError({"agent": "This agent belongs to another team."})


class BudgetEvent(models.Model):
    """A threshold crossed in a month, what was done about it, and its reversal.

    Unique per (budget, month, percent, amount): a threshold fires once a
    month; raising the amount arms it again; reverting does not re-fire it.
    """

    budget = models.ForeignKey(Budget, on_delete=models.CASCADE, related_name="events")
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="+")
    month = models.DateField()
    percent = models.PositiveIntegerField()
    action = models.CharField(max_length=16, choices=BudgetAction.choices)
    amount_usd = models.DecimalField(max_digits=14, decimal_places=2)
    spent_usd = models.DecimalField(**COST)
    at = models.DateTimeField(default=timezone.now)
    affected = models.JSONField(default=list, blank=True,
                                help_text="deployments changed, with their state before")
    webhook_status = models.CharField(max_length=200, blank=True,
                                      help_text="the notification's outcome, in words")
    webhook_state = models.CharField(max_length=16, choices=WebhookState.choices, blank=True,
                                     default=WebhookState.NONE)
    webhook_attempts = models.PositiveSmallIntegerField(default=0)
    webhook_attempt_at = models.DateTimeField(null=True, blank=True,
                                              help_text="when the last attempt started")
    reverted_at = models.DateTimeField(null=True, blank=True)
    reverted_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                    on_delete=models.SET_NULL, related_name="+")

    class Meta:
        ordering = ["-at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["budget", "month", "percent", "amount_usd"],
                                    name="budgetevent_once_a_month"),
        ]

    def __str__(self) -> str:
        return (f"{self.budget.name}: {self.percent}% of ${self.amount_usd} reached "
                f"({self.get_action_display().lower()})")

    @property
    def active(self) -> bool:
        return self.reverted_at is None


# ``deployments.access`` scopes these rows by their team column.
for _model in (Run, ComputeCost, Budget, BudgetEvent):
    register_team_path(_model)

"""Cost: LLM cost from tokens × model price (the ``genai-prices`` package),
compute cost from instance-seconds × the target's cpu and memory prices, and
the sums per run, deployment, agent and team over time.

An LLM call whose model ``genai-prices`` does not know has an *unknown* cost:
the span is flagged and the run's cost is reported as unknown, never as 0.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from cachetools import FIFOCache
from django.db import IntegrityError, transaction
from django.db.models import Count, F, Q, Sum
from django.db.models.functions import TruncDay, TruncHour
from django.utils import timezone
from genai_prices import Usage, data_snapshot
from genai_prices.types import ModelPrice, TieredPrices

from deployments.models import Instance, InstancePhase

from .models import ComputeCost, ComputeCursor, Run, ns_to_datetime

log = logging.getLogger(__name__)

ZERO = Decimal(0)
COST_PLACES = Decimal("1e-12")
# Usage keys of genai-prices, fed from these OpenTelemetry GenAI attributes.
CACHE_READ_KEYS = ("gen_ai.usage.cache_read.input_tokens", "gen_ai.usage.cache_read_input_tokens")
CACHE_WRITE_KEYS = ("gen_ai.usage.cache_creation.input_tokens",
                    "gen_ai.usage.cache_creation_input_tokens")


def quantize(value: Decimal) -> Decimal:
    return value.quantize(COST_PLACES)


class _Affine:
    """Price of (input, output) tokens for a model price without tiers:
    ``base + input × per_input + output × per_output``, derived from the
    package's own calculation and checked against it once."""

    __slots__ = ("base", "per_input", "per_output")

    def __init__(self, base: Decimal, per_input: Decimal, per_output: Decimal):
        self.base, self.per_input, self.per_output = base, per_input, per_output

    def __call__(self, input_tokens: int, output_tokens: int) -> Decimal:
        return self.base + self.per_input * input_tokens + self.per_output * output_tokens


class Pricer:
    """``genai-prices`` with memoisation; thread-safe, one per process.

    ``calc_price`` resolves the model on every call and costs ~0.3 ms; at tens of
    thousands of spans a second that matters. Model resolution is cached per
    (model, provider); for a price without tiers, the price of a call with only
    input and output tokens is affine in the two counts, so it is computed from
    three calls to the package and verified against a fourth. Anything else
    (tiers, cache tokens) goes to the package every time, memoised by usage.
    """

    _NOT_STATIC = object()

    def __init__(self):
        self._lock = threading.Lock()
        # (model, provider) -> the affine price when it never changes over time,
        # None for an unknown model, _NOT_STATIC otherwise.
        self._static: dict[tuple[str, str | None], object] = {}
        # Bounded; the oldest entries go first (reads need no lock: they do not
        # reorder a FIFOCache).
        self._models: FIFOCache[tuple[str, str | None], tuple | None] = FIFOCache(10_000)
        self._affine: dict[int, tuple[object, _Affine | None]] = {}
        self._exact: FIFOCache[tuple, Decimal] = FIFOCache(100_000)

    def _resolve(self, model: str, provider: str | None):
        key = (model, provider)
        try:
            return self._models[key]
        except KeyError:
            pass
        snapshot = data_snapshot.get_snapshot()
        found = None
        for provider_id in ([provider] if provider else []) + [None]:
            try:
                found = snapshot.find_provider_model(model, None, provider_id, None)
                break
            except LookupError:
                continue
        with self._lock:
            self._models[key] = found
        return found

    def price(self, model: str | None, provider: str | None, input_tokens: int,
              output_tokens: int, at: datetime | int, *, cache_read: int = 0,
              cache_write: int = 0) -> Decimal | None:
        """Cost in USD of one LLM call, or None when the model has no known price.

        ``at`` is when the call was made (a datetime, or Unix nanoseconds).
        """
        if not model:
            return None
        key = (model, provider)
        static = self._static.get(key, self._NOT_STATIC)
        if static is None:
            return None
        if static is not self._NOT_STATIC and not cache_read and not cache_write:
            return quantize(static(input_tokens, output_tokens))
        if isinstance(at, int):
            at = ns_to_datetime(at)
        found = self._resolve(model, _provider_id(provider))
        if found is None:
            self._static[key] = None
            return None
        provider_info, model_info = found
        model_price = model_info.get_prices(at)
        if key not in self._static:
            # Prices that do not depend on the date or time of day: remember the
            # affine form for this (model, provider) outright.
            # (Price variants apply only with a price context, which is never given.)
            constant = isinstance(model_info.prices, ModelPrice)
            affine = self._affine_for(model_price, model_info, provider_info, at) \
                if constant else None
            self._static[key] = affine if affine is not None else self._NOT_STATIC
        if not cache_read and not cache_write:
            affine = self._affine_for(model_price, model_info, provider_info, at)
            if affine is not None:
                return quantize(affine(input_tokens, output_tokens))
        key = (id(model_price), input_tokens, output_tokens, cache_read, cache_write)
        value = self._exact.get(key)
        if value is None:
            usage = {"input_tokens": input_tokens, "output_tokens": output_tokens}
            if cache_read:
                usage["cache_read_tokens"] = cache_read
            if cache_write:
                usage["cache_write_tokens"] = cache_write
            try:
                value = quantize(model_info.calc_price(
                    Usage(**usage), provider_info, genai_request_timestamp=at).total_price)
            except (ValueError, LookupError) as exc:  # inconsistent usage for this price
                log.info("cannot price %s %s: %s", model, usage, exc)
                return None
            with self._lock:
                self._exact[key] = value
        return value

    def _affine_for(self, model_price, model_info, provider_info, at) -> _Affine | None:
        entry = self._affine.get(id(model_price))
        if entry is not None and entry[0] is model_price:
            return entry[1]

        def calc(i: int, o: int) -> Decimal:
            return model_info.calc_price(Usage(input_tokens=i, output_tokens=o), provider_info,
                                         genai_request_timestamp=at).total_price

        affine = None
        if not any(isinstance(v, TieredPrices) for v in vars(model_price).values()):
            try:
                base = calc(0, 0)
                candidate = _Affine(base, calc(1, 0) - base, calc(0, 1) - base)
                if all(candidate(i, o) == calc(i, o) for i, o in ((1234, 567), (250_001, 3))):
                    affine = candidate
            except (ValueError, LookupError):
                affine = None
        with self._lock:
            self._affine[id(model_price)] = (model_price, affine)
        return affine


def _provider_id(provider: str | None) -> str | None:
    """A genai-prices provider id from gen_ai.provider.name / gen_ai.system."""
    if not provider:
        return None
    provider = provider.lower()
    return {"az.ai.openai": "azure", "azure.ai.openai": "azure", "aws.bedrock": "aws",
            "gcp.gemini": "google", "gcp.vertex_ai": "google", "gcp.gen_ai": "google",
            "xai": "x-ai", "mistral_ai": "mistral"}.get(provider, provider)


PRICER = Pricer()


# Compute ------------------------------------------------------------------------------

BILLED_PHASES = (InstancePhase.STARTING, InstancePhase.RUNNING)


@dataclass
class Accrued:
    deployment_id: int
    team_id: int
    cost_usd: Decimal


def hourly_rate(target, version) -> Decimal:
    """USD per hour for one instance of ``version`` on ``target``."""
    if target is None or version is None:
        return ZERO
    gib = Decimal(version.memory_mb) / Decimal(1024)
    return Decimal(target.price_cpu_hour) * Decimal(version.cpu) \
        + Decimal(target.price_gib_hour) * gib


def _hours(start: datetime, end: datetime):
    """(hour bucket, seconds) pieces of [start, end)."""
    cursor = start
    while cursor < end:
        bucket = cursor.replace(minute=0, second=0, microsecond=0)
        stop = min(end, bucket + timedelta(hours=1))
        yield bucket, (stop - cursor).total_seconds()
        cursor = stop


def accrue_compute(now: datetime | None = None) -> list[Accrued]:
    """Add the compute cost of every billed instance since its last accrual.

    Each instance's cursor moves by compare-and-set inside the transaction
    that adds its cost, so two workers running this at once never count the
    same seconds twice. Time before ``started_at`` is never billed; an instance
    deleted between two ticks loses at most one tick of cost.
    """
    now = now or timezone.now()
    instances = (Instance.objects.filter(phase__in=BILLED_PHASES, started_at__isnull=False)
                 .select_related("deployment__agent", "deployment__target",
                                 "deployment__version", "target", "version"))
    cursors = dict(ComputeCursor.objects.filter(instance__in=instances)
                   .values_list("instance_id", "accrued_until"))
    totals: dict[int, Accrued] = {}
    for instance in instances:
        previous = cursors.get(instance.pk)
        since = max(previous, instance.started_at) if previous else instance.started_at
        if since >= now:
            continue
        deployment = instance.deployment
        target = instance.target or deployment.target
        version = instance.version or deployment.version
        rate = hourly_rate(target, version)
        try:
            with transaction.atomic():
                if previous is None:
                    ComputeCursor.objects.create(instance=instance, accrued_until=now)
                elif not ComputeCursor.objects.filter(
                        instance=instance, accrued_until=previous).update(accrued_until=now):
                    continue  # another worker accrued this instance meanwhile
                added = ZERO
                for hour, seconds in _hours(since, now):
                    cost = quantize(rate * Decimal(str(seconds)) / Decimal(3600))
                    row, _ = ComputeCost.objects.get_or_create(
                        deployment_id=deployment.pk, instance=instance.name, hour=hour,
                        defaults={"team_id": deployment.agent.team_id,
                                  "agent_id": deployment.agent_id,
                                  "target_id": target.pk if target else None,
                                  "cpu": version.cpu, "memory_mb": version.memory_mb})
                    ComputeCost.objects.filter(pk=row.pk).update(
                        seconds=F("seconds") + seconds, cost_usd=F("cost_usd") + cost)
                    added += cost
        except IntegrityError:
            continue  # a concurrent first accrual created the cursor
        entry = totals.setdefault(deployment.pk, Accrued(deployment.pk,
                                                         deployment.agent.team_id, ZERO))
        entry.cost_usd += added
    return list(totals.values())


# Sums -------------------------------------------------------------------------------


def month_start(at: datetime | None = None) -> datetime:
    at = timezone.localtime(at or timezone.now())
    return at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def day_start(at: datetime | None = None) -> datetime:
    at = timezone.localtime(at or timezone.now())
    return at.replace(hour=0, minute=0, second=0, microsecond=0)


def _scope(*, team_id=None, agent_id=None, deployment_id=None, team_ids=None,
           deployment_ids=None) -> Q:
    q = Q()
    if deployment_ids is not None:
        q &= Q(deployment_id__in=list(deployment_ids))
    if team_id is not None:
        q &= Q(team_id=team_id)
    if team_ids is not None:
        q &= Q(team_id__in=list(team_ids))
    if agent_id is not None:
        q &= Q(agent_id=agent_id)
    if deployment_id is not None:
        q &= Q(deployment_id=deployment_id)
    return q


@dataclass
class Totals:
    llm_usd: Decimal = ZERO
    compute_usd: Decimal = ZERO
    runs: int = 0
    unpriced_runs: int = 0
    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def total_usd(self) -> Decimal:
        return self.llm_usd + self.compute_usd


def totals(since: datetime, until: datetime | None = None, **scope) -> Totals:
    """LLM and compute cost in [since, until) for a team, agent or deployment.

    LLM cost counts every run with spans in the window, finished or not: an
    LLM call costs money whether or not its root span ever arrived.
    """
    q = _scope(**scope)
    runs = Run.objects.filter(q, started_at__gte=since)
    compute = ComputeCost.objects.filter(q, hour__gte=_hour_floor(since))
    if until is not None:
        runs = runs.filter(started_at__lt=until)
        compute = compute.filter(hour__lt=until)
    r = runs.aggregate(cost=Sum("cost_usd"), n=Count("id", filter=Q(root_span_id__isnull=False)),
                       unpriced=Count("id", filter=Q(unpriced_spans__gt=0)),
                       tin=Sum("input_tokens"), tout=Sum("output_tokens"))
    c = compute.aggregate(cost=Sum("cost_usd"))
    return Totals(llm_usd=r["cost"] or ZERO, compute_usd=c["cost"] or ZERO, runs=r["n"] or 0,
                  unpriced_runs=r["unpriced"] or 0, input_tokens=r["tin"] or 0,
                  output_tokens=r["tout"] or 0)


def totals_by_deployment(since: datetime, **scope) -> dict[int, Totals]:
    """``totals`` since ``since`` for every deployment in scope, in two queries."""
    q = _scope(**scope)
    found: dict[int, Totals] = {}
    for row in (Run.objects.filter(q, started_at__gte=since).values("deployment_id")
                .annotate(cost=Sum("cost_usd"), n=Count("id", filter=Q(root_span_id__isnull=False)),
                          unpriced=Count("id", filter=Q(unpriced_spans__gt=0)),
                          tin=Sum("input_tokens"), tout=Sum("output_tokens"))):
        found[row["deployment_id"]] = Totals(
            llm_usd=row["cost"] or ZERO, runs=row["n"], unpriced_runs=row["unpriced"],
            input_tokens=row["tin"] or 0, output_tokens=row["tout"] or 0)
    for row in (ComputeCost.objects.filter(q, hour__gte=_hour_floor(since))
                .values("deployment_id").annotate(cost=Sum("cost_usd"))):
        found.setdefault(row["deployment_id"], Totals()).compute_usd = row["cost"] or ZERO
    return found


def _hour_floor(at: datetime) -> datetime:
    return at.replace(minute=0, second=0, microsecond=0)


def series(since: datetime, until: datetime, bucket: str = "day", **scope) -> list[dict]:
    """Cost per day (or hour) in [since, until), every bucket present."""
    trunc = TruncDay if bucket == "day" else TruncHour
    step = timedelta(days=1) if bucket == "day" else timedelta(hours=1)
    q = _scope(**scope)
    buckets: dict[datetime, dict] = {}
    start = day_start(since) if bucket == "day" else _hour_floor(timezone.localtime(since))
    cursor = start
    while cursor < until:
        buckets[cursor] = {"at": cursor, "llm_usd": ZERO, "compute_usd": ZERO, "runs": 0,
                           "unpriced_runs": 0, "input_tokens": 0, "output_tokens": 0}
        cursor += step
    runs = (Run.objects.filter(q, started_at__gte=start, started_at__lt=until)
            .annotate(bucket=trunc("started_at")).values("bucket")
            .annotate(cost=Sum("cost_usd"), n=Count("id", filter=Q(root_span_id__isnull=False)),
                      unpriced=Count("id", filter=Q(unpriced_spans__gt=0)),
                      tin=Sum("input_tokens"), tout=Sum("output_tokens")))
    for row in runs:
        entry = buckets.get(timezone.localtime(row["bucket"]))
        if entry is not None:
            entry.update(llm_usd=row["cost"] or ZERO, runs=row["n"], unpriced_runs=row["unpriced"],
                         input_tokens=row["tin"] or 0, output_tokens=row["tout"] or 0)
    compute = (ComputeCost.objects.filter(q, hour__gte=start, hour__lt=until)
               .annotate(bucket=trunc("hour")).values("bucket").annotate(cost=Sum("cost_usd")))
    for row in compute:
        entry = buckets.get(timezone.localtime(row["bucket"]))
        if entry is not None:
            entry["compute_usd"] = row["cost"] or ZERO
    result = list(buckets.values())
    for entry in result:
        entry["total_usd"] = entry["llm_usd"] + entry["compute_usd"]
    return result


def month_to_date(*, at: datetime | None = None, **scope) -> Decimal:
    """Spend (LLM + compute) since the start of the month, for budgets."""
    return totals(month_start(at), **scope).total_usd

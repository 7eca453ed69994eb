"""Batch job runs and their traces.

The scheduler gives every job run a trace id and starts the job with it as
``TRACEPARENT``; the agent's root span is a child of it (the reference agent's
``batch_job``), so the job's spans make the telemetry ``Run`` of that trace id
in the job's deployment. ``link_job_runs`` copies what the spans say onto the
job run — tokens, LLM cost and the items processed (the root span's
``hangar.job.items``, when the agent reports it) — and announces each job run
it changed (``job_run.changed``). It runs after spans are stored (with the
``run.finished`` announcement, off the ingest path) and is idempotent: it
recomputes from the run, so spans arriving late or twice change nothing twice.
"""
from __future__ import annotations

import uuid
from datetime import timedelta
from decimal import Decimal

from django.utils import timezone
from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanMessage

from deployments.events import publish
from deployments.models import JobRun

from .models import Run, Span

# Job runs looked at per pass: those created this recently, at most this many.
LINK_WINDOW = timedelta(hours=6)
LINK_LIMIT = 500
ITEMS_ATTRIBUTE = "hangar.job.items"
CENTS = Decimal("0.000001")  # JobRun.cost has six decimals


def link_job_runs(team_id: int, deployment_id: int) -> int:
    """Copy tokens, cost and items from the deployment's recent runs onto their
    job runs; the number of job runs changed."""
    jobs = list(JobRun.objects.filter(
        deployment_id=deployment_id, created_at__gte=timezone.now() - LINK_WINDOW)
        .exclude(trace_id="").order_by("-created_at")
        .only("pk", "schedule_id", "status", "trace_id", "items", "input_tokens",
              "output_tokens", "cost")[:LINK_LIMIT])
    if not jobs:
        return 0
    by_trace = {}
    for job in jobs:
        try:
            by_trace[uuid.UUID(hex=job.trace_id)] = job
        except ValueError:
            continue
    runs = Run.objects.filter(deployment_id=deployment_id, trace_id__in=list(by_trace),
                              root_span_id__isnull=False)
    changed = 0
    for run in runs:
        job = by_trace[run.trace_id]
        cost = run.known_cost
        fields = {"input_tokens": run.input_tokens, "output_tokens": run.output_tokens,
                  "cost": cost.quantize(CENTS) if cost is not None and run.llm_spans else None}
        if job.items is None:
            items = root_items(run)
            if items is not None:
                fields["items"] = items
        if all(getattr(job, name) == value for name, value in fields.items()):
            continue
        # Compare-and-set on what was read: a concurrent pass changes it once.
        if JobRun.objects.filter(pk=job.pk, input_tokens=job.input_tokens,
                                 output_tokens=job.output_tokens).update(**fields):
            changed += 1
            publish(team_id, "job_run.changed",
                    {"deployment": deployment_id, "schedule": job.schedule_id, "run": job.pk,
                     "status": job.status}, deployment_id=deployment_id)
    return changed


def root_items(run: Run) -> int | None:
    """The items the run's root span reports (``hangar.job.items``), if any."""
    data = (Span.objects.filter(trace_id=run.trace_id, span_id=run.root_span_id)
            .values_list("data", flat=True).first())
    if not data:
        return None
    for attribute in SpanMessage.FromString(bytes(data)).attributes:
        if attribute.key == ITEMS_ATTRIBUTE:
            which = attribute.value.WhichOneof("value")
            if which not in ("int_value", "double_value"):
                return None
            number = getattr(attribute.value, which)
            return int(number) if 0 <= number < 2**31 and number == int(number) else None
    return None


def run_for_trace(deployment_id: int, trace_hex: str):
    """The run of a job's trace id in its deployment, or None (no spans yet)."""
    try:
        trace = uuid.UUID(hex=trace_hex)
    except ValueError:
        return None
    return Run.objects.filter(deployment_id=deployment_id, trace_id=trace,
                              root_span_id__isnull=False).first()

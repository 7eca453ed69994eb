"""Span rows through the ORM, runs included, for databases other than
PostgreSQL (the standalone SQLite shape)."""
from __future__ import annotations

import uuid
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from ..models import Run, Span
from .runs import RunDelta, WriteResult, _root_fields, _roots, derive


def _write_orm(source, rows: list) -> WriteResult:
    now = timezone.now()
    with transaction.atomic():
        existing = set()
        trace_ids = sorted({r.trace_id for r in rows})
        for i in range(0, len(trace_ids), 500):
            chunk = [uuid.UUID(bytes=t) for t in trace_ids[i:i + 500]]
            existing.update((t.bytes, s, n) for t, s, n in Span.objects.filter(
                trace_id__in=chunk).values_list("trace_id", "span_id", "start_ns"))
        fresh = [r for r in rows if (r.trace_id, r.span_id, r.start_ns) not in existing]
        Span.objects.bulk_create([Span(
            trace_id=uuid.UUID(bytes=r.trace_id), span_id=r.span_id, start_ns=r.start_ns,
            parent_span_id=r.parent_span_id, deployment_id=r.deployment_id,
            duration_ns=r.duration_ns, name=r.name, kind=r.kind, status_code=r.status_code,
            instance=r.instance, model=r.model, input_tokens=r.input_tokens,
            output_tokens=r.output_tokens, cost_usd=r.cost_usd, flags=r.flags,
            error=r.error, data=r.data,
        ) for r in fresh], batch_size=500)
        for delta in derive(fresh):
            _apply_orm(source, delta, now)
    return WriteResult(inserted=len(fresh), duplicates=len(rows) - len(fresh),
                       finished=_roots(fresh))


def _apply_orm(source, delta: RunDelta, now: datetime) -> tuple[Run, bool]:
    """The ORM twin of RUN_UPSERT for one delta."""
    trace_id = uuid.UUID(bytes=delta.trace_id)
    fields = _root_fields(source, delta)
    run = Run.objects.select_for_update().filter(deployment_id=source.deployment_id,
                                                 trace_id=trace_id).first()
    if run is None:
        run = Run(team_id=source.team_id, agent_id=source.agent_id,
                  deployment_id=source.deployment_id, trace_id=trace_id, first_seen_at=now,
                  model=delta.model, **fields)
    else:
        if run.root_span_id is None and delta.root is not None:
            for name, value in fields.items():
                setattr(run, name, value)
        elif run.root_span_id is None:
            run.started_at = min(run.started_at, fields["started_at"])
        run.model = run.model or delta.model
    newly_rooted = delta.root is not None and run.root_span_id == delta.root.span_id
    if run.pk is not None:
        run.input_tokens += delta.input_tokens
        run.output_tokens += delta.output_tokens
        run.llm_spans += delta.llm_spans
        run.span_count += delta.spans
        run.cost_usd += delta.cost
        run.unpriced_spans += delta.unpriced
    else:
        run.input_tokens, run.output_tokens = delta.input_tokens, delta.output_tokens
        run.llm_spans, run.span_count = delta.llm_spans, delta.spans
        run.cost_usd, run.unpriced_spans = delta.cost, delta.unpriced
    run.updated_at = now
    run.save()
    return run, newly_rooted


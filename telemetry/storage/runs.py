"""What a batch of span rows adds to runs: one ``RunDelta`` per trace, the
fields a root span gives its run, and the runs a batch completes."""
from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from ..models import FLAG_COST_UNKNOWN, FLAG_LLM, FLAG_ROOT, RunStatus, ns_to_datetime


@dataclass
class RunDelta:
    """What one batch adds to one run (one trace of one deployment)."""

    trace_id: bytes
    first_start_ns: int
    root: object = None  # the SpanRow of the root span, if in this batch
    spans: int = 0
    llm_spans: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: Decimal = field(default_factory=Decimal)
    unpriced: int = 0
    model: str = ""


@dataclass
class WriteResult:
    inserted: int = 0
    duplicates: int = 0
    finished: list[tuple[str, str]] = field(default_factory=list)  # (trace id, status)


def derive(rows) -> list[RunDelta]:
    deltas: dict[bytes, RunDelta] = {}
    for row in rows:
        delta = deltas.get(row.trace_id)
        if delta is None:
            delta = deltas[row.trace_id] = RunDelta(row.trace_id, row.start_ns)
        elif row.start_ns < delta.first_start_ns:
            delta.first_start_ns = row.start_ns
        delta.spans += 1
        flags = row.flags
        if flags & FLAG_ROOT and delta.root is None:
            delta.root = row
        if flags & FLAG_LLM:
            delta.llm_spans += 1
            delta.input_tokens += row.input_tokens or 0
            delta.output_tokens += row.output_tokens or 0
            if flags & FLAG_COST_UNKNOWN:
                delta.unpriced += 1
            else:
                delta.cost += row.cost_usd
            if not delta.model and row.model:
                delta.model = row.model
    return sorted(deltas.values(), key=lambda d: d.trace_id)


def _root_fields(source, delta: RunDelta) -> dict:
    root = delta.root
    if root is None:
        return {"version_id": None, "instance": "", "root_span_id": None, "name": "",
                "status": RunStatus.INCOMPLETE, "error": "",
                "started_at": ns_to_datetime(delta.first_start_ns), "ended_at": None,
                "duration_ms": None}
    return {"version_id": source.version_for(root.instance), "instance": root.instance,
            "root_span_id": root.span_id, "name": root.name,
            "status": RunStatus.ERROR if root.status_code == 2 else RunStatus.OK,
            "error": root.error or "", "started_at": ns_to_datetime(root.start_ns),
            "ended_at": ns_to_datetime(root.start_ns + root.duration_ns),
            "duration_ms": root.duration_ns / 1e6}


def _roots(rows: list) -> list[tuple[str, str]]:
    """(trace id, status) of the root spans among ``rows``: runs now complete."""
    return [(r.trace_id.hex(), "error" if r.status_code == 2 else "ok")
            for r in rows if r.flags & FLAG_ROOT]


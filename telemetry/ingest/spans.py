"""Spans to rows: validate every span of a request and build the rows of the
span table (``SpanRow``), flags, GenAI usage and errors included."""
from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import NamedTuple

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from ..models import FLAG_COST_UNKNOWN, FLAG_LLM, FLAG_ROOT, FLAG_TRUNCATED
from .genai import _genai
from .limits import MAX_ERROR, MAX_NAME, _clean, enforce_limits
from .replies import Malformed

INT64_MAX = 2**63 - 1
MAX_ENUM = 2**15 - 1  # span kinds and status codes are stored as smallint
ZERO_TRACE = bytes(16)
ZERO_SPAN = bytes(8)
# Span.flags bits in OTLP: the parent is known to be remote (another process).
PARENT_IS_REMOTE = 0x300


class SpanRow(NamedTuple):
    """One validated span: a row of the span table, its fields the table's
    columns in ``storage.COLUMNS`` order, so that COPY writes it as it is (ids
    as bytes or signed 64-bit ints, times in ns, None for NULL)."""

    trace_id: bytes
    span_id: int
    start_ns: int
    parent_span_id: int | None
    deployment_id: int
    duration_ns: int
    name: str
    kind: int
    status_code: int
    instance: str
    model: str | None
    input_tokens: int | None
    output_tokens: int | None
    cost_usd: Decimal | None
    flags: int
    error: str | None  # root spans with an error status
    data: bytes


@dataclass
class Batch:
    rows: list[SpanRow]
    duplicates: int = 0
    truncated: int = 0



def extract(request: ExportTraceServiceRequest, *, deployment_id: int,
            max_attribute_bytes: int, instance: str | None = None) -> Batch:
    """Validate every span and build the rows of ``deployment_id``; raise
    Malformed on the first bad span.

    This runs for every span received, so it reads each field once and skips
    what most spans lack (a status, span flags, GenAI usage). ``instance``, when
    given, is every span's instance (the sender's proven identity).
    """
    rows: list[SpanRow] = []
    append = rows.append
    seen: set[bytes] = set()
    duplicates = truncated = 0
    number = 0
    proven = instance
    for resource_spans in request.resource_spans:
        instance = proven or ""
        for kv in () if proven else resource_spans.resource.attributes:
            if kv.key == "service.instance.id":
                instance = _clean(str(_value(kv.value) or ""), 255)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                number += 1
                trace_id = span.trace_id
                span_id = span.span_id
                parent = span.parent_span_id
                start = span.start_time_unix_nano
                end = span.end_time_unix_nano
                if len(trace_id) != 16 or trace_id == ZERO_TRACE:
                    raise Malformed(f"span {number}: traceId must be 16 bytes and not all zero")
                if len(span_id) != 8 or span_id == ZERO_SPAN:
                    raise Malformed(f"span {number}: spanId must be 8 bytes and not all zero")
                if parent and len(parent) != 8:
                    raise Malformed(f"span {number}: parentSpanId must be 8 bytes or empty")
                if not start:
                    raise Malformed(f"span {number}: startTimeUnixNano is missing")
                if start > INT64_MAX or end > INT64_MAX:
                    raise Malformed(f"span {number}: a timestamp is out of range")
                key = trace_id + span_id
                if key in seen:
                    duplicates += 1
                    continue
                seen.add(key)
                name = span.name
                data = span.SerializeToString()
                flags = 0
                if len(data) > max_attribute_bytes or len(name) > MAX_NAME:
                    if enforce_limits(span, max_attribute_bytes):
                        flags = FLAG_TRUNCATED
                        truncated += 1
                        data = span.SerializeToString()
                        name = span.name
                if "\x00" in name:
                    name = name.replace("\x00", "")
                if parent and parent != ZERO_SPAN:
                    parent_id = int.from_bytes(parent, "big", signed=True)
                    # Span flags say whether the parent is remote.
                    if span.flags & PARENT_IS_REMOTE == PARENT_IS_REMOTE:
                        flags |= FLAG_ROOT
                else:
                    parent_id = None
                    flags |= FLAG_ROOT
                status = span.status.code if span.HasField("status") else 0
                kind = span.kind
                # Enums are open: any int32 parses. Their columns are smallint
                # (COPY's binary int2 would silently keep the low 16 bits).
                if not 0 <= kind <= MAX_ENUM or not 0 <= status <= MAX_ENUM:
                    raise Malformed(f"span {number}: kind {kind} or status code {status} "
                                    f"is out of range")
                model = input_tokens = output_tokens = cost = None
                if b"gen_ai.usage." in data:
                    model, input_tokens, output_tokens, cost, llm = _genai(data, start)
                    if llm:
                        flags |= FLAG_LLM if cost is not None else FLAG_LLM | FLAG_COST_UNKNOWN
                append(SpanRow(
                    trace_id, int.from_bytes(span_id, "big", signed=True), start, parent_id,
                    deployment_id, end - start if end > start else 0, name, kind, status,
                    instance, model, input_tokens, output_tokens, cost, flags,
                    _error_of(span) if status == 2 and flags & FLAG_ROOT else None, data))
    return Batch(rows, duplicates, truncated)


def _value(any_value):
    which = any_value.WhichOneof("value")
    return getattr(any_value, which) if which else None



def _error_of(span) -> str:
    if span.status.message:
        return _clean(span.status.message, MAX_ERROR)
    for event in span.events:
        if event.name == "exception":
            found = {kv.key: _value(kv.value) for kv in event.attributes
                     if kv.key in ("exception.type", "exception.message")}
            text = ": ".join(str(found[k]) for k in ("exception.type", "exception.message")
                             if found.get(k))
            if text:
                return _clean(text, MAX_ERROR)
    return "error"


"""A run's trace: its spans, decoded and arranged as a tree (API) or as a
waterfall (the dashboard), with timings relative to the run's start."""
from __future__ import annotations

import base64
import math
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal

from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanMessage

from .models import (
    FLAG_COST_UNKNOWN,
    FLAG_LLM,
    FLAG_ROOT,
    FLAG_TRUNCATED,
    SPAN_KINDS,
    STATUS_CODES,
    Run,
    Span,
    datetime_to_ns,
    ns_to_datetime,
    span_hex,
)

MAX_SPANS = 5000
# Spans of a run are looked up within this margin of the root's timings (which
# also lets PostgreSQL skip the day partitions that cannot hold them).
MARGIN = timedelta(hours=1)


def python_value(value):
    """An OTLP AnyValue as plain JSON-safe Python."""
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [python_value(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return {kv.key: python_value(kv.value) for kv in value.kvlist_value.values}
    if which == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    result = getattr(value, which)
    if isinstance(result, float) and not math.isfinite(result):
        return str(result)
    return result


def _attributes(kvs) -> dict:
    return {kv.key: python_value(kv.value) for kv in kvs}


@dataclass
class Node:
    span_id: str
    parent_span_id: str | None
    name: str
    kind: str
    start_ns: int
    offset_ms: float
    duration_ms: float
    status: str
    status_message: str
    attributes: dict
    events: list
    links: list
    instance: str
    model: str | None
    input_tokens: int | None
    output_tokens: int | None
    cost_usd: Decimal | None
    llm: bool
    cost_unknown: bool
    truncated: bool
    root: bool
    missing_parent: bool = False
    depth: int = 0
    children: list[Node] = field(default_factory=list)

    @property
    def start(self):
        return ns_to_datetime(self.start_ns)

    @property
    def error(self) -> bool:
        return self.status == "error"


@dataclass
class Trace:
    run: Run
    roots: list[Node]
    count: int
    truncated: bool
    total_ms: float

    def flat(self) -> list[Node]:
        """Depth-first, children by start time: the waterfall's rows."""
        out: list[Node] = []

        def walk(node: Node, depth: int) -> None:
            node.depth = depth
            out.append(node)
            for child in node.children:
                walk(child, depth + 1)

        for root in self.roots:
            walk(root, 0)
        return out


def _node(span: Span, origin_ns: int) -> Node:
    message = SpanMessage.FromString(bytes(span.data))
    return Node(
        span_id=span_hex(span.span_id), parent_span_id=span_hex(span.parent_span_id),
        name=span.name, kind=SPAN_KINDS.get(span.kind, str(span.kind)), start_ns=span.start_ns,
        offset_ms=(span.start_ns - origin_ns) / 1e6, duration_ms=span.duration_ns / 1e6,
        status=STATUS_CODES.get(span.status_code, str(span.status_code)),
        status_message=message.status.message, attributes=_attributes(message.attributes),
        events=[{"name": e.name, "offset_ms": (e.time_unix_nano - origin_ns) / 1e6
                 if e.time_unix_nano else None, "attributes": _attributes(e.attributes)}
                for e in message.events],
        links=[{"trace_id": link.trace_id.hex(), "span_id": link.span_id.hex(),
                "attributes": _attributes(link.attributes)} for link in message.links],
        instance=span.instance, model=span.model, input_tokens=span.input_tokens,
        output_tokens=span.output_tokens, cost_usd=span.cost_usd,
        llm=bool(span.flags & FLAG_LLM), cost_unknown=bool(span.flags & FLAG_COST_UNKNOWN),
        truncated=bool(span.flags & FLAG_TRUNCATED), root=bool(span.flags & FLAG_ROOT))


def load(run: Run, limit: int = MAX_SPANS) -> Trace:
    """The run's spans as a tree. A span whose parent never arrived is shown at
    the top level, marked ``missing_parent``."""
    lo = datetime_to_ns(run.started_at - MARGIN)
    hi = datetime_to_ns((run.ended_at or run.started_at) + MARGIN)
    spans = list(Span.objects.filter(trace_id=run.trace_id, deployment_id=run.deployment_id,
                                     start_ns__gte=lo, start_ns__lt=hi)
                 .order_by("start_ns", "span_id")[:limit + 1])
    truncated = len(spans) > limit
    spans = spans[:limit]
    origin = next((s.start_ns for s in spans if s.span_id == run.root_span_id),
                  datetime_to_ns(run.started_at))
    nodes = [_node(span, origin) for span in spans]
    by_id = {node.span_id: node for node in nodes}
    roots = []
    for node in nodes:
        parent = by_id.get(node.parent_span_id) if node.parent_span_id else None
        if parent is not None and parent is not node:
            parent.children.append(node)
        else:
            node.missing_parent = node.parent_span_id is not None and not node.root
            roots.append(node)
    roots.sort(key=lambda n: (not n.root, n.start_ns))
    end = max((n.offset_ms + n.duration_ms for n in nodes), default=0.0)
    return Trace(run=run, roots=roots, count=len(nodes), truncated=truncated,
                 total_ms=max(end, run.duration_ms or 0.0, 0.001))

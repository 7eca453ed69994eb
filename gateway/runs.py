"""Every proxied request is a run: the gateway's own span, written off the
request path in batches.

The gateway gives the agent a ``traceparent`` naming a span of its own. After
``TRACE_WAIT_S`` it looks (one query per batch) whether the agent's spans for
those traces arrived: if so, the gateway span joins the agent's run as a child
of its root (the run keeps the agent's name, tokens and cost, and gains the
caller, bytes and status); if not, the gateway span is the run's root (status,
latency, bytes, caller key). Per-replica in-flight counts are written to Redis
each second for the deployment page (``figures``).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from dataclasses import dataclass

from channels.db import database_sync_to_async
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from telemetry import storage
from telemetry.ingest.auth import Source
from telemetry.ingest.spans import PARENT_IS_REMOTE, extract
from telemetry.models import Run

from .callers import Caller
from .figures import INFLIGHT_TTL_S, inflight_key
from .proxy import Outcome
from .routes import Route

log = logging.getLogger(__name__)
TRACE_WAIT_S = float(os.environ.get("HANGAR_GATEWAY_TRACE_WAIT_S", "3"))
ROOT_NAME = "gateway"  # the name of a run the gateway's own span makes


@dataclass
class Record:
    deployment_id: int
    team_id: int
    agent_id: int
    version_id: int
    caller: str
    method: str
    path: str
    outcome: Outcome
    start_ns: int
    duration_ns: int
    at: float  # monotonic, when it finished


def _attr(key: str, value) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=str(value)))


def span_of(record: Record, parent: bytes | None, remote: bool) -> Span:
    o = record.outcome
    _, trace_hex, span_hex, _ = o.traceparent.split("-")
    attributes = [_attr("http.request.method", record.method), _attr("url.path", record.path),
                  _attr("http.response.status_code", o.status),
                  _attr("hangar.gateway.caller", record.caller),
                  _attr("hangar.gateway.replica", o.replica),
                  _attr("hangar.gateway.bytes_in", o.bytes_in),
                  _attr("hangar.gateway.bytes_out", o.bytes_out)]
    if o.first_byte_s is not None:
        attributes.append(_attr("hangar.gateway.first_byte_ms", o.first_byte_s * 1000))
    failed = o.status >= 500 or o.status == 499 or bool(o.error)
    span = Span(trace_id=bytes.fromhex(trace_hex), span_id=bytes.fromhex(span_hex),
                name=f"{ROOT_NAME} {record.method} {record.path}", kind=Span.SPAN_KIND_SERVER,
                start_time_unix_nano=record.start_ns,
                end_time_unix_nano=record.start_ns + record.duration_ns,
                attributes=attributes,
                status=Status(code=Status.STATUS_CODE_ERROR if failed else
                              Status.STATUS_CODE_OK, message=o.error))
    if parent:
        span.parent_span_id = parent
        if remote:
            span.flags = PARENT_IS_REMOTE
    return span


def write(records: list[Record]) -> int:
    """Store the batch's spans (sync: runs in a thread); the runs finished."""
    traces = {uuid.UUID(hex=r.outcome.traceparent.split("-")[1]): r for r in records}
    agent_roots = dict(Run.objects.filter(trace_id__in=list(traces), root_span_id__isnull=False)
                       .values_list("trace_id", "root_span_id"))
    by_deployment: dict[int, list[Record]] = {}
    for r in records:
        by_deployment.setdefault(r.deployment_id, []).append(r)
    finished = 0
    for deployment_id, rows in by_deployment.items():
        request = ExportTraceServiceRequest()
        spans = request.resource_spans.add().scope_spans.add().spans
        for r in rows:
            trace = uuid.UUID(hex=r.outcome.traceparent.split("-")[1])
            root = agent_roots.get(trace)
            if root is not None:  # the agent traced it: join its run
                spans.append(span_of(r, (root & (2**64 - 1)).to_bytes(8, "big"), False))
            elif r.outcome.caller_parent:  # the caller's trace: our span is Hangar's root
                spans.append(span_of(r, bytes.fromhex(r.outcome.caller_parent), True))
            else:
                spans.append(span_of(r, None, False))
        first = rows[0]
        source = Source(deployment_id=deployment_id, team_id=first.team_id,
                        agent_id=first.agent_id, version_id=first.version_id,
                        token_digest=None)
        batch = extract(request, deployment_id=deployment_id, max_attribute_bytes=64 * 1024)
        result = storage.write_spans(source, batch.rows)
        storage.announce(source, result)
        finished += len(result.finished)
    return finished


class Recorder:
    def __init__(self, table=None, redis=None, writer=None):
        self.pending: list[Record] = []
        self.task: asyncio.Task | None = None
        self.table, self.redis = table, redis
        self.ticks = 0
        self.writer = writer  # where batches are written (``writer.Writer``), None: a thread

    def add(self, route: Route, caller: Caller, outcome: Outcome, method: str, path: str,
            started_ns: int, duration_s: float) -> None:
        if not outcome.traceparent or not outcome.replica and not outcome.status:
            return
        deployment_id = next((r.deployment_id for r in route.replicas
                              if r.name == outcome.replica), route.deployment_ids[0])
        agent_id, version_id = route.owners.get(deployment_id, (0, 0))
        self.pending.append(Record(
            deployment_id=deployment_id, team_id=route.team_id, agent_id=agent_id,
            version_id=version_id, caller=caller.ident, method=method, path=path,
            outcome=outcome, start_ns=started_ns, duration_ns=int(duration_s * 1e9),
            at=time.monotonic()))

    async def write(self, records: list[Record]) -> None:
        if self.writer is None:
            await database_sync_to_async(write)(records)
        else:
            await self.writer.write(records)

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run(), name="gateway-runs")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        if self.pending:
            with contextlib.suppress(Exception):
                await self.write(self.pending)
        if self.writer is not None:
            await self.writer.close()

    async def publish_inflight(self) -> None:
        """Each replica's in-flight count from this process, for the deployment page."""
        if self.redis is None or self.table is None:
            return
        per_deployment: dict[int, dict[str, int]] = {}
        self.table.leaving = [r for r in self.table.leaving if r.outstanding > 0]
        serving = [r for route in self.table.routes.values() for r in route.replicas]
        for replica in serving + self.table.leaving:
            counts = per_deployment.setdefault(replica.deployment_id, {})
            counts[replica.name] = counts.get(replica.name, 0) + replica.outstanding
        async with self.redis.pipeline(transaction=False) as pipe:
            for deployment_id, counts in per_deployment.items():
                key = inflight_key(deployment_id)
                pipe.delete(key)
                pipe.hset(key, mapping=counts)
                pipe.expire(key, INFLIGHT_TTL_S)
            await pipe.execute()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            self.ticks += 1
            if self.ticks % 2 == 0:
                with contextlib.suppress(Exception):
                    await self.publish_inflight()
            due_before = time.monotonic() - TRACE_WAIT_S
            due = [r for r in self.pending if r.at <= due_before]
            if not due:
                continue
            self.pending = [r for r in self.pending if r.at > due_before]
            try:
                await self.write(due)
            except Exception:  # noqa: BLE001 - run records are best effort, serving is not
                log.warning("gateway: %d run records not written", len(due), exc_info=True)

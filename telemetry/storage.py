"""Span storage: bulk writes, day partitions, retention, live events.

One entry point per side of the web server, the same SQL underneath:
``write_spans`` (Django's connection: the Django view, WSGI, tests, the
standalone SQLite shape) and ``write_spans_async`` (the ASGI fast path on
PostgreSQL, from the event loop, with group commit).

On PostgreSQL the rows are ``COPY``'d (binary format) into the day-partitioned
span table and a statement-level trigger derives the runs from exactly the
rows inserted (migration 0001). If a span is already stored (an exporter
retrying), the COPY fails on the primary key and the batch goes through a
staging table with ``INSERT … ON CONFLICT DO NOTHING`` instead, so retries
never count twice.
Elsewhere the ORM does the same, runs included.
"""
from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
import uuid
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from functools import partial

import psycopg
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone
from psycopg.types.string import BytesBinaryDumper
from psycopg_pool import AsyncConnectionPool

from deployments.events import Coalescer, publish

from .models import (
    FLAG_COST_UNKNOWN,
    FLAG_LLM,
    FLAG_ROOT,
    ComputeCost,
    Run,
    RunStatus,
    Span,
    ns_to_datetime,
)

log = logging.getLogger(__name__)

NS_PER_DAY = 86_400 * 1_000_000_000
COLUMNS = ("trace_id", "span_id", "start_ns", "parent_span_id", "deployment_id", "duration_ns",
           "name", "kind", "status_code", "instance", "model", "input_tokens", "output_tokens",
           "cost_usd", "flags", "error", "data")
COLUMN_LIST = ", ".join(COLUMNS)
COPY_SPANS = f"COPY telemetry_span ({COLUMN_LIST}) FROM STDIN (FORMAT BINARY)"
# Binary COPY casts nothing: each value must arrive in its column's binary form,
# so the types are named (``set_types``) instead of guessed from the Python
# values (a small int would go as int2). The trace id (a uuid column) goes as
# bytea: the binary form of a uuid is its 16 bytes, which is what the bytes
# dumper writes. Binary saves PostgreSQL parsing text (and hex for ``data``,
# which halves the bytes sent); the test suite reads every column back.
COPY_TYPES = ("bytea", "int8", "int8", "int8", "int8", "int8", "text", "int2", "int2", "text",
              "text", "int8", "int8", "numeric", "int2", "text", "bytea")
STAGING = "telemetry_span_incoming"


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


def write_spans(source, rows: list) -> WriteResult:
    """Store ``rows`` (``ingest.SpanRow``) for ``source``'s deployment, durably."""
    if not rows:
        return WriteResult()
    if connection.vendor == "postgresql":
        return _write_postgresql(source, rows)
    return _write_orm(source, rows)


# PostgreSQL ---------------------------------------------------------------------------

def adapt_for_copy(adapters) -> None:
    """Make ``adapters`` (a connection's or cursor's) dump bytea with psycopg's
    C bytes dumper when a COPY names the type: the one it registers last for
    bytea, for the DB-API ``Binary`` wrapper, is Python code that checks the
    type of every value (~0.5 µs a value, two values a span)."""
    adapters.register_dumper(bytes, BytesBinaryDumper)


def _roots(rows: list) -> list[tuple[str, str]]:
    """(trace id, status) of the root spans among ``rows``: runs now complete."""
    return [(r.trace_id.hex(), "error" if r.status_code == 2 else "ok")
            for r in rows if r.flags & FLAG_ROOT]


def _write_postgresql(source, rows: list) -> WriteResult:
    ensure_partitions(_days(rows))
    try:
        with transaction.atomic(), _cursor() as cursor:
            _copy_rows(cursor, COPY_SPANS, rows)
        return WriteResult(inserted=len(rows), finished=_roots(rows))
    except psycopg.errors.UniqueViolation:
        pass  # some spans are already stored (an exporter retrying): keep the new ones
    with transaction.atomic(), _cursor() as cursor:
        cursor.execute(CREATE_STAGING)
        _copy_rows(cursor, COPY_STAGING, rows)
        cursor.execute(INSERT_NEW)
        fresh = _fresh(rows, cursor.fetchall())
    return WriteResult(inserted=len(fresh), duplicates=len(rows) - len(fresh),
                       finished=_roots(fresh))


def _cursor() -> psycopg.Cursor:
    cursor = psycopg.Cursor(connection.connection)
    adapt_for_copy(cursor.adapters)
    return cursor


def _copy_rows(cursor, statement: str, rows: list) -> None:
    with cursor.copy(statement) as copy:
        copy.set_types(COPY_TYPES)
        for row in rows:
            copy.write_row(row)


INSERT_NEW = (f"INSERT INTO telemetry_span ({COLUMN_LIST}) SELECT {COLUMN_LIST} "
              f"FROM {STAGING} ORDER BY trace_id, span_id "
              f"ON CONFLICT DO NOTHING RETURNING trace_id, span_id, start_ns")
CREATE_STAGING = (f"CREATE TEMP TABLE IF NOT EXISTS {STAGING} (LIKE telemetry_span) "
                  f"ON COMMIT DELETE ROWS")
COPY_STAGING = f"COPY {STAGING} ({COLUMN_LIST}) FROM STDIN (FORMAT BINARY)"


def _fresh(rows: list, stored_keys) -> list:
    stored = {(t.bytes, s, n) for t, s, n in stored_keys}
    return [r for r in rows if (r.trace_id, r.span_id, r.start_ns) in stored]


# PostgreSQL, from the event loop ----------------------------------------------------------


def ingest_pool() -> AsyncConnectionPool:
    """A ``psycopg_pool.AsyncConnectionPool`` of autocommit connections for the
    ASGI fast path, sized by ``HANGAR_INGEST_POOL`` (from
    ``HANGAR_INGEST_CONNECTIONS``), beside Django's own pool. Spans are written
    without leaving the event loop (no thread hand-offs, no GIL contention
    between a decoding thread and the loop); transactions are explicit. Opened
    by its first use; one per event loop."""
    params = dict(connection.get_connection_params())
    for key in ("cursor_factory", "context", "prepare_threshold"):
        params.pop(key, None)
    return AsyncConnectionPool(kwargs={**params, "autocommit": True}, open=False,
                               configure=_configure, name="hangar-ingest",
                               **settings.HANGAR_INGEST_POOL)


async def _configure(conn) -> None:
    adapt_for_copy(conn.adapters)


class GroupWriter:
    """Group commit on the event loop: one COPY for every export waiting.

    Up to ``pool.size`` COPYs run at once; exports that arrive while they are
    all busy queue up and the next free one writes them *together*, in one
    statement and one commit. Under load that spreads the per-statement and
    per-commit costs (round trips, WAL flush) over several exports; idle, an
    export is written at once. Each export's answer still waits for the commit
    of the COPY that holds its spans.
    """

    MAX_ROWS = 5000

    def __init__(self, pool: AsyncConnectionPool):
        self.pool = pool
        self.size = pool.max_size
        self.queue: list[tuple[list, asyncio.Future]] = []
        self.running = 0
        self.opened = False

    @property
    def closed(self) -> bool:
        """The pool was opened and has been closed since (a server shutting down)."""
        return self.opened and self.pool.closed

    async def write(self, rows: list) -> WriteResult:
        future = asyncio.get_running_loop().create_future()
        self.queue.append((rows, future))
        if self.running < self.size:
            self.running += 1
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self.queue:
                batch, size = [], 0
                while self.queue and (not batch or size + len(self.queue[0][0]) <= self.MAX_ROWS):
                    item = self.queue.pop(0)
                    batch.append(item)
                    size += len(item[0])
                await self._flush(batch)
        finally:
            self.running -= 1

    async def _flush(self, batch: list) -> None:
        try:
            results = await self._copy(batch)
        except BaseException as exc:  # every export of the batch gets the failure
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

    async def _copy(self, batch: list) -> list[WriteResult]:
        self.opened = True
        await self.pool.open()  # at once if already open; PoolClosed once closed
        # The pool rolls back whatever a failure leaves open, and replaces broken
        # connections.
        async with self.pool.connection() as conn:
            cursor = conn.cursor()
            try:
                await _copy_batch(cursor, COPY_SPANS, batch)
                return [WriteResult(inserted=len(rows), finished=_roots(rows))
                        for rows, _ in batch]
            except psycopg.errors.UniqueViolation:
                pass  # some spans are already stored (an exporter retrying): keep the new
            async with conn.transaction():
                await cursor.execute(CREATE_STAGING)
                await _copy_batch(cursor, COPY_STAGING, batch)
                await cursor.execute(INSERT_NEW)
                stored = await cursor.fetchall()
            results = []
            for rows, _ in batch:
                fresh = _fresh(rows, stored)
                results.append(WriteResult(inserted=len(fresh),
                                           duplicates=len(rows) - len(fresh),
                                           finished=_roots(fresh)))
            return results


async def _copy_batch(cursor, statement: str, batch: list) -> None:
    async with cursor.copy(statement) as copy:
        copy.set_types(COPY_TYPES)
        for rows, _ in batch:
            for row in rows:
                await copy.write_row(row)


_writers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def group_writer() -> GroupWriter:
    loop = asyncio.get_running_loop()
    writer = _writers.get(loop)
    if writer is None or writer.closed:
        writer = _writers[loop] = GroupWriter(ingest_pool())
    return writer


def async_pool() -> AsyncConnectionPool:
    """The ingest pool of the running event loop (``close()`` it on shutdown)."""
    return group_writer().pool


async def close_ingest_pool() -> None:
    """Close the running loop's ingest pool, if it has one (web process shutdown)."""
    writer = _writers.pop(asyncio.get_running_loop(), None)
    if writer is not None:
        await writer.pool.close()


async def write_spans_async(source, rows: list) -> WriteResult:
    """``write_spans`` for PostgreSQL from an event loop. The COPY runs in
    autocommit: one statement, atomic with the runs its trigger updates, and
    durable when this returns."""
    if not rows:
        return WriteResult()
    days = _days(rows)
    if not days <= _ensured:
        await asyncio.get_running_loop().run_in_executor(None, _ensure_and_close, days)
    return await group_writer().write(rows)


def _ensure_and_close(days: set[int]) -> None:
    try:
        ensure_partitions(days)
    finally:
        connection.close()


# Partitions ----------------------------------------------------------------------------

_ensured: set[int] = set()
_partition_lock = threading.Lock()
PARTITION_NAME = re.compile(r"^telemetry_span_p(\d{8})$")


def _days(rows) -> set[int]:
    return {r.start_ns // NS_PER_DAY for r in rows}


def partition_name(day: date) -> str:
    return f"telemetry_span_p{day:%Y%m%d}"


def ensure_partitions(days: Iterable[int]) -> None:
    """Create the day partitions for ``days`` (days since the epoch) that are
    within retention and at most a week ahead; spans outside that window go
    to the default partition. Memoised per process."""
    missing = [d for d in days if d not in _ensured]
    if not missing:
        return
    today = int(time.time()) // 86_400
    low = today - settings.HANGAR_SPAN_RETENTION_DAYS
    for day in missing:
        if low <= day <= today + 7:
            create_partition(date(1970, 1, 1) + timedelta(days=day))
        with _partition_lock:
            _ensured.add(day)


def create_partition(day: date) -> bool:
    """Create the partition of ``day`` if it is missing; True if created. Rows of
    that day already in the default partition are moved into it."""
    name = partition_name(day)
    lo = (day - date(1970, 1, 1)).days * NS_PER_DAY
    hi = lo + NS_PER_DAY
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s)", [name])
        if cursor.fetchone()[0] is not None:
            return False
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(hashtext('telemetry_span_partitions'))")
        # Read pg_class itself: to_regclass may still answer from this session's
        # catalog cache, which does not see a table another session has just
        # created (an advisory lock does not refresh it).
        cursor.execute("SELECT 1 FROM pg_class WHERE relname = %s "
                       "AND relnamespace = current_schema()::regnamespace", [name])
        if cursor.fetchone() is not None:
            return False
        cursor.execute("SELECT 1 FROM telemetry_span_default WHERE start_ns >= %s "
                       "AND start_ns < %s LIMIT 1", [lo, hi])
        if cursor.fetchone() is None:
            cursor.execute(f"CREATE TABLE {name} PARTITION OF telemetry_span "
                           f"FOR VALUES FROM ({lo}) TO ({hi})")
        else:
            cursor.execute(f"CREATE TABLE {name} (LIKE telemetry_span INCLUDING DEFAULTS)")
            cursor.execute(f"WITH moved AS (DELETE FROM telemetry_span_default WHERE "
                           f"start_ns >= %s AND start_ns < %s RETURNING *) "
                           f"INSERT INTO {name} SELECT * FROM moved", [lo, hi])
            cursor.execute(f"ALTER TABLE telemetry_span ATTACH PARTITION {name} "
                           f"FOR VALUES FROM ({lo}) TO ({hi})")
    log.info("created span partition %s", name)
    return True


def partitions() -> list[tuple[str, date]]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                       "WHERE i.inhparent = 'telemetry_span'::regclass")
        names = [row[0] for row in cursor.fetchall()]
    found = []
    for name in names:
        match = PARTITION_NAME.match(name)
        if match:
            found.append((name, datetime.strptime(match.group(1), "%Y%m%d").date()))
    return sorted(found, key=lambda item: item[1])


# Retention --------------------------------------------------------------------------------


def retention(now: datetime | None = None) -> dict:
    """Create partitions a week ahead, drop span partitions (or rows) older than
    ``HANGAR_SPAN_RETENTION_DAYS``, delete runs and compute cost rows older than
    ``HANGAR_RUN_RETENTION_DAYS`` in batches. (Deployments prune their own
    chart samples: ``deployments.samples``.)"""
    now = now or timezone.now()
    span_cutoff = now - timedelta(days=settings.HANGAR_SPAN_RETENTION_DAYS)
    cutoff_ns = int(span_cutoff.timestamp()) * 1_000_000_000
    report = {"partitions_created": 0, "partitions_dropped": 0, "spans_deleted": 0}
    if connection.vendor == "postgresql":
        today = now.astimezone(UTC).date()
        for offset in range(-1, 8):
            report["partitions_created"] += create_partition(today + timedelta(days=offset))
        for name, day in partitions():
            if (day - date(1970, 1, 1)).days * NS_PER_DAY + NS_PER_DAY <= cutoff_ns:
                with transaction.atomic(), connection.cursor() as cursor:
                    cursor.execute(f"ALTER TABLE telemetry_span DETACH PARTITION {name}")
                    cursor.execute(f"DROP TABLE {name}")
                report["partitions_dropped"] += 1
        report["spans_deleted"] = _batched(
            "DELETE FROM telemetry_span_default WHERE ctid IN (SELECT ctid FROM "
            "telemetry_span_default WHERE start_ns < %s LIMIT 10000)", [cutoff_ns])
    else:
        report["spans_deleted"] = _batched(
            "DELETE FROM telemetry_span WHERE rowid IN (SELECT rowid FROM telemetry_span "
            "WHERE start_ns < %s LIMIT 10000)", [cutoff_ns])
    run_cutoff = now - timedelta(days=settings.HANGAR_RUN_RETENTION_DAYS)
    report["runs_deleted"] = _delete_in_batches(Run.objects.filter(first_seen_at__lt=run_cutoff))
    report["compute_rows_deleted"] = _delete_in_batches(
        ComputeCost.objects.filter(hour__lt=run_cutoff))
    return report


def _batched(sql: str, params: list) -> int:
    total = 0
    while True:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql, params)
            deleted = cursor.rowcount
        total += max(deleted, 0)
        if deleted < 10000:
            return total


def _delete_in_batches(queryset) -> int:
    total = 0
    while True:
        ids = list(queryset.values_list("pk", flat=True)[:5000])
        if not ids:
            return total
        total += queryset.model.objects.filter(pk__in=ids).delete()[0]


# Other databases (standalone SQLite) ------------------------------------------------------


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


# Live events ------------------------------------------------------------------------------


class RunAnnouncer:
    """Publishes ``run.finished`` for a deployment at most once per ``window``
    seconds per process, always including the last (trailing edge), without
    blocking ingestion: the events' coalescer, with every send (a query for
    the latest run, then the publisher) on its timer thread. Best effort: the
    spans are already committed, so a failing channel layer only logs."""

    def __init__(self, window: float = 1.0):
        self.coalescer = Coalescer(window, inline=False)

    def finished(self, team_id: int, deployment_id: int) -> None:
        self.coalescer.submit(deployment_id, partial(_announce, team_id, deployment_id))


def _announce(team_id: int, deployment_id: int) -> None:
    try:
        publish_latest_run(team_id, deployment_id)
    finally:
        connection.close()  # a timer thread keeps no connection


def publish_latest_run(team_id: int, deployment_id: int) -> None:
    run = (Run.objects.filter(deployment_id=deployment_id, root_span_id__isnull=False)
           .order_by("-started_at").values("id", "status").first())
    if run is not None:
        publish(team_id, "run.finished", {"run_id": run["id"], "status": run["status"]},
                deployment_id=deployment_id)


ANNOUNCER = RunAnnouncer()


def announce(source, result: WriteResult) -> None:
    if result.finished:
        ANNOUNCER.finished(source.team_id, source.deployment_id)

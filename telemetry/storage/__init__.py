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

The package, one job a module: ``runs`` (what a batch adds to runs),
``pgcopy`` (COPY on Django's connection, and the staging path), ``group``
(the event loop's pool and group commit), ``orm`` (other databases),
``partitioning`` (day partitions), ``pruning`` (retention) and ``live``
(``run.finished`` events).
"""
from __future__ import annotations

from django.db import connection

from .group import (
    GroupWriter,
    async_pool,
    close_ingest_pool,
    group_writer,
    ingest_pool,
    write_spans_async,
)
from .live import ANNOUNCER, RunAnnouncer, announce, publish_latest_run
from .orm import _write_orm
from .partitioning import (
    NS_PER_DAY,
    PARTITION_NAME,
    create_partition,
    ensure_partitions,
    partition_name,
    partitions,
)
from .pgcopy import (
    COLUMN_LIST,
    COLUMNS,
    COPY_SPANS,
    COPY_STAGING,
    COPY_TYPES,
    CREATE_STAGING,
    INSERT_NEW,
    STAGING,
    _write_postgresql,
    adapt_for_copy,
)
from .pruning import retention
from .runs import RunDelta, WriteResult, derive

__all__ = [
    "ANNOUNCER", "COLUMNS", "COLUMN_LIST", "COPY_SPANS", "COPY_STAGING", "COPY_TYPES",
    "CREATE_STAGING", "INSERT_NEW", "NS_PER_DAY", "PARTITION_NAME", "STAGING", "GroupWriter",
    "RunAnnouncer", "RunDelta", "WriteResult", "adapt_for_copy", "announce", "async_pool",
    "close_ingest_pool", "create_partition", "derive", "ensure_partitions", "group_writer",
    "ingest_pool", "partition_name", "partitions", "publish_latest_run", "retention",
    "write_spans", "write_spans_async",
]


def write_spans(source, rows: list) -> WriteResult:
    """Store ``rows`` (``ingest.SpanRow``) for ``source``'s deployment, durably."""
    if not rows:
        return WriteResult()
    if connection.vendor == "postgresql":
        return _write_postgresql(source, rows)
    return _write_orm(source, rows)

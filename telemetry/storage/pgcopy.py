"""Span rows into PostgreSQL by binary ``COPY``, on Django's connection. A
batch holding a span already stored (an exporter retrying) fails on the
primary key and goes through a staging table with ``INSERT … ON CONFLICT DO
NOTHING`` instead, so retries never count twice. The statements are shared
with the group writer (``group``)."""
from __future__ import annotations

import psycopg
from django.db import connection, transaction
from psycopg.types.string import BytesBinaryDumper

from .partitioning import _days, ensure_partitions
from .runs import WriteResult, _roots

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


def adapt_for_copy(adapters) -> None:
    """Make ``adapters`` (a connection's or cursor's) dump bytea with psycopg's
    C bytes dumper when a COPY names the type: the one it registers last for
    bytea, for the DB-API ``Binary`` wrapper, is Python code that checks the
    type of every value (~0.5 µs a value, two values a span)."""
    adapters.register_dumper(bytes, BytesBinaryDumper)



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


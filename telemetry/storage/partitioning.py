"""The span table's day partitions: created on demand (memoised per process)
and ahead of time, with rows of a new day moved out of the default partition."""
from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterable
from datetime import date, datetime, timedelta

from django.conf import settings
from django.db import connection, transaction

log = logging.getLogger("telemetry.storage")

NS_PER_DAY = 86_400 * 1_000_000_000
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


"""PostgreSQL from the event loop (the ASGI fast path): a pool of autocommit
connections per loop and group commit, one COPY for every export waiting."""
from __future__ import annotations

import asyncio
import weakref

import psycopg
from django.conf import settings
from django.db import connection
from psycopg_pool import AsyncConnectionPool

from .partitioning import _days, _ensured, ensure_partitions
from .pgcopy import (
    COPY_SPANS,
    COPY_STAGING,
    COPY_TYPES,
    CREATE_STAGING,
    INSERT_NEW,
    _fresh,
    adapt_for_copy,
)
from .runs import WriteResult, _roots


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


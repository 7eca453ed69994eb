"""The whole request: ``handle`` (Django's connection) and ``handle_async``
(the ASGI fast path) authenticate, decode, validate, store and answer."""
from __future__ import annotations

import asyncio
import logging
import weakref

import psycopg
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError, connection

from .. import storage
from .auth import Source, authenticate, cached_source
from .decode import content_format, decompress, parse
from .replies import JSON, IngestError, Reply, Unavailable, encode_reply
from .spans import Batch, extract

log = logging.getLogger("telemetry.ingest")


def prepare(body: bytes, fmt: str, content_encoding: str, source: Source) -> Batch:
    raw = decompress(body, content_encoding, settings.HANGAR_INGEST_MAX_BYTES)
    request = parse(raw, fmt)
    del raw
    return extract(request, deployment_id=source.deployment_id,
                   max_attribute_bytes=settings.HANGAR_INGEST_MAX_ATTRIBUTE_BYTES,
                   instance=source.instance)


def _unavailable(exc: Exception) -> Unavailable:
    log.warning("span storage unavailable: %s", exc)
    return Unavailable("span storage is unavailable; retry later")


def handle(body: bytes, *, content_type: str, content_encoding: str,
           authorization: str) -> Reply:
    """Decode, validate and store one OTLP/HTTP trace export; answer in kind.

    Synchronous, on Django's database connection: the Django view (WSGI, tests,
    the standalone SQLite shape) uses this; ``handle_async`` is its twin for the
    ASGI fast path on PostgreSQL.
    """
    try:
        fmt = content_format(content_type)
    except IngestError as exc:
        return encode_reply(JSON, exc)
    try:
        source = authenticate(authorization)
        batch = prepare(body, fmt, content_encoding, source)
        try:
            result = storage.write_spans(source, batch.rows)
        except (DatabaseError, psycopg.Error) as exc:
            raise _unavailable(exc) from None
        storage.announce(source, result)
    except IngestError as exc:
        return encode_reply(fmt, exc)
    return encode_reply(fmt)


async def handle_async(body: bytes, *, content_type: str, content_encoding: str,
                       authorization: str) -> Reply:
    """``handle`` on the event loop: decoding runs inline (it is CPU-bound and
    short), the write goes through ``storage.write_spans_async``."""
    try:
        fmt = content_format(content_type)
    except IngestError as exc:
        return encode_reply(JSON, exc)
    try:
        source = cached_source(authorization) or await _authenticate_once(authorization)
        batch = prepare(body, fmt, content_encoding, source)
        del body
        try:
            result = await storage.write_spans_async(source, batch.rows)
        except (DatabaseError, psycopg.Error, OSError) as exc:
            raise _unavailable(exc) from None
        storage.announce(source, result)
    except IngestError as exc:
        return encode_reply(fmt, exc)
    return encode_reply(fmt)


_authenticating: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


async def _authenticate_once(authorization: str) -> Source:
    """``authenticate`` in a worker thread, once for all the exports that arrive
    with the same token while it runs: after a start, or when the cached source
    expires, every export in flight would otherwise query the database."""
    loop = asyncio.get_running_loop()
    pending = _authenticating.setdefault(loop, {})
    task = pending.get(authorization)
    if task is None:
        task = pending[authorization] = loop.create_task(
            sync_to_async(_authenticate_and_close, thread_sensitive=False)(authorization))
        task.add_done_callback(lambda _: pending.pop(authorization, None))
    try:
        # Shielded: an export whose client goes away does not cancel the others'.
        return await asyncio.shield(task)
    except (DatabaseError, psycopg.Error, OSError) as exc:
        raise _unavailable(exc) from None


def _authenticate_and_close(authorization: str) -> Source:
    """``authenticate`` from a worker thread that keeps no connection open."""
    try:
        return authenticate(authorization)
    finally:
        connection.close()

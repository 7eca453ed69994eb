"""What a device token proves, kept in this process's memory: token hash → :class:`Known`.

The device poll's fast path (``edge.fastpath``) and the telemetry door
(``edge.auth.telemetry_source``) ask here instead of the database. An entry
is filled on demand (from the event loop through a small ``psycopg_pool``,
from a thread through Django's connection) and is trusted only while this
process LISTENs on PostgreSQL's ``hangar_edge_device`` channel: a trigger
(migration 0002) announces every change to a device's state, state version or
token when it commits, and the entry is dropped as the announcement arrives —
milliseconds after the commit, in every web process. The process that makes
the change (the revoke verb) also drops the entry itself on commit, so the
device's next call there is refused at once.

No listening connection (it broke, it is reconnecting, the database is not
PostgreSQL) → nothing is cached and every lookup reads the database; the
cache is emptied whenever listening starts or stops, so an announcement
missed while deaf never leaves a stale entry. Inside a transaction (tests,
an atomic block) the transaction's own view wins: the cache is bypassed.
``HANGAR_EDGE_DEVICE_CACHE_S`` only bounds how long an untouched entry stays.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from dataclasses import dataclass

import psycopg
from cachetools import TTLCache
from django.conf import settings
from django.db import connection
from psycopg_pool import AsyncConnectionPool

from .models import Device

log = logging.getLogger("edge.devicecache")
CHANNEL = "hangar_edge_device"
QUERY = ("SELECT id, state, state_version, team_id, group_id FROM edge_device "
         "WHERE token_hash = %s")
PING_S = 30.0  # how often a quiet listening connection is checked
RECONNECT_S = 1.0


@dataclass(frozen=True, slots=True)
class Known:
    device_id: int
    state: str
    state_version: int
    team_id: int
    group_id: int


# Entries, the listening flag and the generation change under one lock; the
# generation moves with every drop, so a lookup that read the database before
# a drop does not store what it read after it.
_lock = threading.Lock()
_cache: TTLCache[str, Known] | None = None
_generation = [0]
_live = [False]
_listener: list[threading.Thread | None] = [None]
_postgresql: list[bool | None] = [None]


def enabled() -> bool:
    """Whether this process can listen (PostgreSQL); read once."""
    if _postgresql[0] is None:
        _postgresql[0] = connection.vendor == "postgresql"
    return _postgresql[0]


def _entries() -> TTLCache[str, Known]:
    global _cache
    if _cache is None:
        _cache = TTLCache(maxsize=200_000, ttl=settings.HANGAR_EDGE_DEVICE_CACHE_S)
    return _cache


def cached(token_hash: str) -> Known | None:
    with _lock:
        return _entries().get(token_hash) if _live[0] else None


def _store(token_hash: str, known: Known, generation: int) -> None:
    with _lock:
        if _live[0] and generation == _generation[0]:
            _entries()[token_hash] = known


def forget(token_hash: str) -> None:
    with _lock:
        _entries().pop(token_hash, None)
        _generation[0] += 1
        waiting = _waiters.pop(token_hash, ())
    _wake(waiting)


def forget_all() -> None:
    with _lock:
        _entries().clear()
        _generation[0] += 1


def listening() -> bool:
    return _live[0]


def _known(row) -> Known | None:
    return Known(*row) if row is not None else None


def lookup(token_hash: str) -> Known | None:
    """The device behind a token hash (None: no such token), from a thread."""
    ensure_listening()
    in_transaction = connection.in_atomic_block
    if not in_transaction:
        hit = cached(token_hash)
        if hit is not None:
            return hit
    generation = _generation[0]
    known = _known(Device.objects.filter(token_hash=token_hash).values_list(
        "id", "state", "state_version", "team_id", "group_id").first())
    if known is not None and not in_transaction:
        _store(token_hash, known, generation)
    return known


async def lookup_async(token_hash: str) -> Known | None:
    """``lookup`` from the event loop: a miss is one indexed SELECT on this
    loop's pool, never a thread hop."""
    ensure_listening()
    hit = cached(token_hash)
    if hit is not None:
        return hit
    generation = _generation[0]
    pool = await _pool()
    async with pool.connection() as conn:
        cursor = await conn.execute(QUERY, [token_hash])
        known = _known(await cursor.fetchone())
    if known is not None:
        _store(token_hash, known, generation)
    return known


# The listening thread ------------------------------------------------------------------------


def _params() -> dict:
    params = dict(connection.get_connection_params())
    for key in ("cursor_factory", "context", "prepare_threshold"):
        params.pop(key, None)
    return params


def ensure_listening() -> None:
    """Start the listening thread once (again if it died); PostgreSQL only."""
    if not enabled():
        return
    thread = _listener[0]
    if thread is not None and thread.is_alive():
        return
    with _lock:
        thread = _listener[0]
        if thread is not None and thread.is_alive():
            return
        thread = threading.Thread(target=_listen_forever, name="edge-device-listener",
                                  daemon=True)
        _listener[0] = thread
    thread.start()


def _set_live(live: bool) -> None:
    with _lock:
        _entries().clear()
        _generation[0] += 1
        _live[0] = live
        waiting = [w for ws in _waiters.values() for w in ws]
        _waiters.clear()
    _wake(waiting)  # deaf from now on: long polls re-read the database


# Long polls waiting for a device's change ----------------------------------------------------

_waiters: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Future]]] = {}


def _wake(waiting) -> None:
    for loop, future in waiting:
        try:
            loop.call_soon_threadsafe(_resolve, future)
        except RuntimeError:  # that loop is closed
            pass


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


def watch(token_hash: str) -> asyncio.Future:
    """A future done at the next announced change of this device (or when this
    process stops listening); ``unwatch`` it when done with it."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()
    with _lock:
        _waiters.setdefault(token_hash, set()).add((loop, future))
    return future


def unwatch(token_hash: str, future: asyncio.Future) -> None:
    with _lock:
        waiting = _waiters.get(token_hash)
        if waiting is not None:
            waiting.discard((asyncio.get_running_loop(), future))
            if not waiting:
                del _waiters[token_hash]


def _listen_forever() -> None:
    params = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10,
              "keepalives_count": 3, **_params(), "autocommit": True}
    while True:
        try:
            with psycopg.connect(**params) as conn:
                conn.execute(f"LISTEN {CHANNEL}")
                _set_live(True)
                log.debug("listening on %s", CHANNEL)
                while True:
                    for note in conn.notifies(timeout=PING_S):
                        forget(note.payload)
                    conn.execute("SELECT 1")  # a server gone quiet shows here
        except (psycopg.Error, OSError) as exc:
            if _live[0]:
                log.warning("device cache off until PostgreSQL answers again (%s)", exc)
        finally:
            _set_live(False)
        time.sleep(RECONNECT_S)


# The event loop's pool ------------------------------------------------------------------------

_pools: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


async def _pool() -> AsyncConnectionPool:
    loop = asyncio.get_running_loop()
    opening = _pools.get(loop)
    if opening is None:
        opening = _pools[loop] = loop.create_task(_open_pool())
    try:
        return await asyncio.shield(opening)
    except (psycopg.Error, OSError):
        if _pools.get(loop) is opening:
            del _pools[loop]  # the next lookup tries again
        raise


async def _open_pool() -> AsyncConnectionPool:
    pool = AsyncConnectionPool(kwargs={**_params(), "autocommit": True}, min_size=1,
                               max_size=2, open=False, timeout=5.0,
                               name="hangar-edge-devices")
    await pool.open()
    return pool


async def close_pool() -> None:
    """Close the running loop's pool, if it opened one (web process shutdown)."""
    opening = _pools.pop(asyncio.get_running_loop(), None)
    if opening is not None:
        try:
            pool = await opening
        except (psycopg.Error, OSError):
            return
        await pool.close()

"""Database work from the gateway's event loop: Django's ORM is synchronous, so
each call runs in a worker thread — one of the threads API's own few
(``THREADS``), not the one thread channels' ``database_sync_to_async`` shares
with the gateway's table loads and run records, so an admission never queues
behind them nor behind another run's events. Each thread takes a connection
from the process's pool for the call and gives it back after (CONN_MAX_AGE=0).
What must not interleave is kept apart by PostgreSQL row locks (the thread row,
its runs), not by running on one thread."""
from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import sync_to_async
from django.db import close_old_connections

THREADS = 4  # of the pool's HANGAR_DB_POOL_MAX (10) connections per process
_executor = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="threads-db")


def db(fn):
    @functools.wraps(fn)
    def call(*args, **kwargs):
        close_old_connections()
        try:
            return fn(*args, **kwargs)
        finally:
            close_old_connections()

    return sync_to_async(call, thread_sensitive=False, executor=_executor)

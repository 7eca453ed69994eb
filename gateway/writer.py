"""The run writer: the gateway's run records are turned into spans and stored
by a process of their own, so building and writing them (about 0.1 ms a
request) never holds the interpreter lock the event loop needs. One worker
process, spawned on the first batch, sets Django up (``django.setup`` is its
initializer) before it unpickles a batch. ``HANGAR_GATEWAY_RUN_WRITER=thread``
writes them in a thread of the gateway instead, as does a writer process that
died (until another one is started).
"""
from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import django
from channels.db import database_sync_to_async
from django.db import close_old_connections

from .runs import Record
from .runs import write as write_records

log = logging.getLogger(__name__)


def write(records: list[Record]) -> int:
    """A batch, in the writer process."""
    close_old_connections()
    return write_records(records)


def _pool() -> ProcessPoolExecutor:
    return ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                               initializer=django.setup)


class Writer:
    def __init__(self):
        in_thread = os.environ.get("HANGAR_GATEWAY_RUN_WRITER", "process").lower() == "thread"
        self.pool = None if in_thread else _pool()
        if self.pool is not None:
            self.pool.submit(int)  # start the process now, not on the first batch

    async def write(self, records: list[Record]) -> None:
        if self.pool is not None:
            try:
                await asyncio.get_running_loop().run_in_executor(self.pool, write, records)
                return
            except BrokenProcessPool:
                log.warning("gateway: the run writer process died; starting another")
                self.pool = _pool()
        await database_sync_to_async(write_records)(records)

    async def close(self) -> None:
        if self.pool is not None:
            await asyncio.to_thread(self.pool.shutdown)

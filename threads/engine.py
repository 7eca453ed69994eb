"""Running thread runs in the gateway process: the agent call, the run's
events, leases, cancels from other processes, the sweep.

A run this process admitted (or was handed by ``actions.finish`` / the sweep)
is executed here (the agent call itself: ``invoke.AgentCalls``): the gateway's
balancer picks a replica, the agent's ``POST /invoke`` gets ``{"input",
"thread": {"id", "state"}}`` with ``Accept: text/event-stream``, and what it
streams becomes the run's events
(``values`` — its state so far, kept as the run's partial state — ``updates``,
tokens as ``messages``/``events``); its final answer (``done``, or a JSON body
from an agent that does not stream) carries the new ``state``. Events are
numbered 1, 2, 3… per run — the SSE ids a dropped stream resumes from, unique
and ordered whatever the clock says — held in memory for the run's live
subscribers and written to PostgreSQL in batches for the others.

Every running run has a lease this process renews; a process that dies stops
renewing, and the sweep of any other process marks its runs ``error`` and
moves their threads on. Cancels (interrupt, rollback, a deleted thread) reach
the process running the run through PostgreSQL ``NOTIFY``.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time

from cachetools import TTLCache
from django.conf import settings
from django.db import connection

from gateway.callers import Caller
from gateway.proxy import Outcome, upstream_session

from . import actions
from .asyncdb import db
from .invoke import AgentCalls, AgentFailed, Spec, load_spec
from .models import RunStatus
from .runlog import RunLog, read_events

__all__ = ["Engine", "db"]

log = logging.getLogger(__name__)
KEEP_LOG_S = 120  # a finished run's events stay in memory this long


class Engine(AgentCalls):
    def __init__(self, gateway):
        self.gateway = gateway
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.tasks: dict[str, asyncio.Task] = {}
        self.logs: dict[str, RunLog] = {}
        self.loops: list[asyncio.Task] = []
        self.stopped: set[str] = set()  # runs cancelled here: their end is not theirs to write
        # Cancelled before their task was made (a NOTIFY can beat the admission's own
        # return to the loop): not to be started.
        self.cancelled_early: TTLCache = TTLCache(maxsize=10_000, ttl=60)
        self.client = None  # aiohttp.ClientSession: the keep-alive pool to the replicas
        self.wake = asyncio.Event()  # a NOTIFY said runs are pending: sweep now

    async def start(self) -> None:
        # A pool of its own, made as the gateway's (keep-alive, unbounded): a run
        # holds its connection for minutes, then gives it back to the next run.
        self.client = upstream_session()
        loop = asyncio.get_running_loop()
        self.loops = [loop.create_task(self._leases(), name="threads-leases"),
                      loop.create_task(self._sweeps(), name="threads-sweep"),
                      loop.create_task(self._writes(), name="threads-events")]
        if connection.vendor == "postgresql":
            self.loops.append(loop.create_task(self._listen(), name="threads-cancels"))

    async def stop(self) -> None:
        for task in self.loops:
            task.cancel()
        for task in list(self.tasks.values()):
            task.cancel()
        for task in [*self.loops, *self.tasks.values()]:
            with contextlib.suppress(BaseException):
                await task
        if self.client is not None:
            await self.client.close()

    # Launching and cancelling -------------------------------------------------------

    def log_of(self, run_id: str) -> RunLog:
        found = self.logs.get(run_id)
        if found is None:
            found = self.logs[run_id] = RunLog(run_id)
        return found

    def launch(self, run_id, spec: Spec | None = None) -> None:
        """Execute a running run here (``spec``: what it needs, when in hand)."""
        run_id = str(run_id)
        if run_id in self.tasks or self.cancelled_early.pop(run_id, None):
            return
        self.log_of(run_id)
        task = asyncio.get_running_loop().create_task(self._execute(run_id, spec),
                                                      name=f"thread-run-{run_id}")
        self.tasks[run_id] = task
        task.add_done_callback(lambda _t: self.tasks.pop(run_id, None))

    def cancel_local(self, run_id: str, reason: str = "") -> None:
        """Stop a run executing here: its agent call is closed. Once only — the verb's
        caller and the NOTIFY both ask, and a second cancel landing in the first
        one's clean-up would stop that half-way."""
        task = self.tasks.get(run_id)
        if task is None:
            self.cancelled_early[run_id] = True
        elif run_id not in self.stopped:
            self.stopped.add(run_id)
            task.cancel(reason)

    def stop_runs(self, stop: list[tuple[str, str]]) -> None:
        for run_id, owner in stop:
            if owner == self.owner:
                self.cancel_local(run_id)

    # Executing -------------------------------------------------------------------------

    async def _execute(self, run_id: str, spec: Spec | None) -> None:
        runlog = self.log_of(run_id)
        try:
            if spec is None:
                spec = await db(load_spec)(run_id)
            if spec is None:
                return
            runlog.emit("metadata", {"run_id": run_id, "thread_id": spec.thread_id,
                                     "attempt": 1})
            await self._run(spec, runlog)
        except asyncio.CancelledError:
            pass
        except Exception:  # noqa: BLE001 - a run must never stay running for a bug here
            log.exception("threads: run %s failed in the gateway", run_id)
            with contextlib.suppress(Exception):
                await self._end(run_id, runlog, status=RunStatus.ERROR,
                                error="internal error in the gateway")
        finally:
            runlog.close()
            self.stopped.discard(run_id)

    async def _current(self, key, route):
        """``route``, or the table's entry once read again when it cannot be
        served as it is (unknown, or no ready replica without scale to zero): a
        deployment made ready a moment ago is served, not refused."""
        loader = getattr(self.gateway, "loader", None)
        stale = route is None or (not route.replicas and route.scale_to_zero_after_s is None)
        if loader is None or not stale:
            return route
        await loader.fresh()
        return self.gateway.table.get(key)

    async def _run(self, spec: Spec, runlog: RunLog) -> None:
        route = self.gateway.table.get(spec.key)
        outcome = Outcome()
        started, started_ns = time.monotonic(), time.time_ns()
        status, error, result, state, has_state = RunStatus.ERROR, "", None, None, False
        try:
            async with asyncio.timeout(spec.timeout_s):
                route = await self._current(spec.key, route)
                if route is None or route.refusal:
                    raise AgentFailed(route.refusal if route
                                      else f"no deployment {'/'.join(spec.key)}")
                result, state, has_state = await self._call(spec, route, runlog, outcome)
            status = RunStatus.SUCCESS
        except TimeoutError:
            status, error = RunStatus.TIMEOUT, f"no answer within the run timeout " \
                                               f"({spec.timeout_s:g}s)"
        except AgentFailed as exc:
            error = str(exc)
        except asyncio.CancelledError:
            outcome.error = "cancelled (interrupt, rollback or thread deleted)"
            outcome.status = outcome.status or 499
            self._record(route, outcome, started, started_ns)
            raise
        outcome.error = error
        trace_id = outcome.traceparent.split("-")[1] if outcome.traceparent else ""
        output = (state if has_state else result) if status == RunStatus.SUCCESS else None
        if status == RunStatus.SUCCESS:
            if has_state:
                last_values = next((d for _, e, d in reversed(runlog.events) if e == "values"),
                                   None)
                if last_values != state:
                    runlog.emit("values", state)
            else:
                runlog.emit("values", result)
            runlog.emit("updates", {spec.agent: state if has_state else result})
        else:
            runlog.emit("error", {"error": status.capitalize() if status == RunStatus.TIMEOUT
                                  else "AgentError", "message": error})
        self._record(route, outcome, started, started_ns)
        await self._end(spec.run_id, runlog, status=status, output=output, state=state,
                        has_state=has_state, error=error, trace_id=trace_id,
                        replica=outcome.replica)

    def _record(self, route, outcome: Outcome, started: float, started_ns: int) -> None:
        recorder = getattr(self.gateway, "recorder", None)
        if route is None or recorder is None or not outcome.traceparent:
            return
        caller = Caller(ident="threads", team_id=route.team_id)
        recorder.add(route, caller, outcome, "POST", "/invoke", started_ns,
                     time.monotonic() - started)

    async def _end(self, run_id: str, runlog: RunLog, **kwargs) -> None:
        if run_id in self.stopped:
            return
        events, runlog.unsaved = runlog.unsaved, []
        done = await db(actions.finish)(run_id, self.owner, events=events, **kwargs)
        if done.next is not None:
            self.launch(done.next.pk)

    # Subscribing ---------------------------------------------------------------------

    async def follow(self, run_id: str, after: int = 0):
        """The run's events after ``after``, live until it ends (here or in
        another process)."""
        run_id = str(run_id)
        while True:
            local = self.logs.get(run_id)
            if local is not None and (local.events or run_id in self.tasks or local.closed):
                while True:
                    changed = local.changed
                    for item in local.events[after:]:
                        after = item[0]
                        yield item
                    if local.closed and after >= len(local.events):
                        return
                    if changed is local.changed:
                        await changed.wait()
            rows, active = await db(read_events)(run_id, after)
            for item in rows:
                after = item[0]
                yield item
            if not rows and not active:
                return
            if not rows:
                await asyncio.sleep(0.05)

    # Background loops ----------------------------------------------------------------

    async def _leases(self) -> None:
        every = settings.HANGAR_THREADS_LEASE_S / 3
        while True:
            await asyncio.sleep(every)
            with contextlib.suppress(Exception):
                await db(actions.renew)(self.owner, list(self.tasks))

    async def _writes(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            batch = {}
            for run_id, runlog in list(self.logs.items()):
                if runlog.unsaved:
                    batch[run_id], runlog.unsaved = runlog.unsaved, []
                if runlog.closed and time.monotonic() - runlog.closed_at > KEEP_LOG_S:
                    self.logs.pop(run_id, None)
            if batch:
                try:
                    await db(actions.store_events)(batch)
                except Exception:  # noqa: BLE001 - try again on the next tick
                    log.warning("threads: events not written", exc_info=True)
                    for run_id, events in batch.items():
                        if run_id in self.logs:
                            self.logs[run_id].unsaved[:0] = events

    async def _sweeps(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), settings.HANGAR_THREADS_SWEEP_S)
            self.wake.clear()
            try:
                for run in await db(actions.sweep)(self.owner):
                    self.launch(run.pk)
            except Exception:  # noqa: BLE001 - next pass
                log.warning("threads: sweep failed", exc_info=True)

    async def _listen(self) -> None:
        import psycopg  # noqa: PLC0415 - PostgreSQL only

        params = connection.get_connection_params()
        params.pop("cursor_factory", None)
        params.pop("context", None)
        params.pop("prepare_threshold", None)
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(autocommit=True, **params)
                async with conn:
                    await conn.execute(f"LISTEN {actions.CANCEL_CHANNEL}")
                    async for note in conn.notifies():
                        owner, _, run_id = note.payload.rpartition(" ")
                        if note.payload == "dispatch":
                            self.wake.set()
                        elif owner == self.owner:
                            self.cancel_local(run_id)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - reconnect
                log.warning("threads: cancel listener lost; reconnecting", exc_info=True)
                await asyncio.sleep(1)

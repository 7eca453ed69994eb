"""Instance logs over HTTP: a tail as text, or a follow as Server-Sent Events.

A follow reads the driver's blocking line iterator in its own daemon thread
(never one of the server's executor threads) and hands lines over through a
bounded queue. The response is an async iterator under ASGI, so the server
notices a client that goes away (Django cancels the response) and the thread
stops at the driver's next line or idle tick; a comment line is sent as a
heartbeat while nothing is logged, so proxies keep the stream open and a dead
peer shows up. Being a daemon thread, it never holds up a server's shutdown.
"""
from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Iterator

from django.core.handlers.asgi import ASGIRequest
from django.http import HttpResponse, StreamingHttpResponse

from .errors import Conflict, Invalid
from .models import Instance
from .runtimes import RuntimeFailure, get_driver

logger = logging.getLogger(__name__)

FOLLOW_LIMIT_S = 600  # a follow stream ends after ten minutes; clients reconnect
HEARTBEAT_S = 15.0  # an SSE comment when nothing was sent for this long
BUFFER_LINES = 1000  # lines read ahead of a slow client before the reader waits

FOLLOWING = ": following\n\n"
HEARTBEAT = ": heartbeat\n\n"
END = "event: end\ndata: {}\n\n"


def _data(line: str) -> str:
    return f"data: {json.dumps(line)}\n\n"


def _error(message: str) -> str:
    return f"event: error\ndata: {json.dumps(message)}\n\n"


def log_response(instance: Instance, *, tail: int, follow: bool, request=None) -> HttpResponse:
    if not 0 <= tail <= 10_000:
        raise Invalid({"tail": ["Give 0 to 10000 lines."]})
    target = instance.target or instance.deployment.target
    driver = get_driver(target)
    if follow and not driver.features.supports_log_follow:
        raise Conflict(f"{target.get_kind_display()} targets cannot follow logs.")
    try:
        lines = driver.logs(instance.deployment_id, instance.name, tail=tail, follow=follow)
        first = [] if follow else [line for line in lines if line is not None]
    except RuntimeFailure as exc:
        raise Conflict(f"Cannot read logs: {exc}") from None
    if not follow:
        return HttpResponse("\n".join(first) + ("\n" if first else ""),
                            content_type="text/plain; charset=utf-8")
    asgi = isinstance(request, ASGIRequest)
    response = StreamingHttpResponse(follow_async(lines) if asgi else follow_sync(lines),
                                     content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


def _close(lines: Iterator) -> None:
    close = getattr(lines, "close", None)
    if close is not None:
        try:
            close()
        except (RuntimeFailure, OSError, ValueError):
            pass


def follow_sync(lines: Iterator[str | None]) -> Iterator[str]:
    """The stream for a synchronous server (WSGI, the test client): the
    driver's idle ticks (``None``) give the chance to send heartbeats."""
    deadline = time.monotonic() + FOLLOW_LIMIT_S
    quiet_until = time.monotonic() + HEARTBEAT_S
    yield FOLLOWING
    try:
        failure = None
        try:
            for line in lines:
                now = time.monotonic()
                if line is not None:
                    yield _data(line)
                    quiet_until = now + HEARTBEAT_S
                elif now >= quiet_until:
                    yield HEARTBEAT
                    quiet_until = now + HEARTBEAT_S
                if now > deadline:
                    break
        except RuntimeFailure as exc:
            failure = str(exc)
        if failure is not None:
            yield _error(failure)
        yield END
    finally:
        _close(lines)


class _Reader(threading.Thread):
    """Pulls the driver's lines into a bounded queue and wakes the event loop."""

    def __init__(self, lines: Iterator[str | None], loop: asyncio.AbstractEventLoop,
                 wakeup: asyncio.Event):
        super().__init__(name="hangar-log-follow", daemon=True)
        self.lines, self.loop, self.wakeup = lines, loop, wakeup
        self.items: queue.Queue[tuple[str, str]] = queue.Queue(maxsize=BUFFER_LINES)
        self.stopped = threading.Event()

    def run(self) -> None:
        try:
            for line in self.lines:
                if self.stopped.is_set():
                    return
                if line is not None and not self._put("line", line):
                    return
            self._put("end", "")
        except RuntimeFailure as exc:
            self._put("error", str(exc))
        except Exception:
            logger.exception("following a log failed")
            self._put("error", "reading the log failed")
        finally:
            _close(self.lines)

    def _put(self, kind: str, value: str) -> bool:
        while not self.stopped.is_set():
            try:
                self.items.put((kind, value), timeout=1)
                break
            except queue.Full:
                continue
        else:
            return False
        try:
            self.loop.call_soon_threadsafe(self.wakeup.set)
        except RuntimeError:  # the event loop is gone: the server stopped
            self.stopped.set()
            return False
        return True


async def follow_async(lines: Iterator[str | None]) -> AsyncIterator[str]:
    """The stream under ASGI. Cancelled (client gone, server stopping) or
    closed, it stops the reader thread."""
    loop = asyncio.get_running_loop()
    wakeup = asyncio.Event()
    reader = _Reader(lines, loop, wakeup)
    reader.start()
    deadline = loop.time() + FOLLOW_LIMIT_S
    try:
        yield FOLLOWING
        while loop.time() < deadline:
            try:
                kind, value = reader.items.get_nowait()
            except queue.Empty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                wakeup.clear()
                if not reader.items.empty():
                    continue
                try:
                    await asyncio.wait_for(wakeup.wait(), min(HEARTBEAT_S, remaining))
                except TimeoutError:
                    yield HEARTBEAT
                continue
            if kind == "line":
                yield _data(value)
            elif kind == "error":
                yield _error(value)
                break
            else:
                break
        yield END
    finally:
        reader.stopped.set()

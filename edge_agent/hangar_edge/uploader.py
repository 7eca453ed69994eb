"""Uploads the buffer, oldest span first, as OTLP/HTTP protobuf to Hangar's
``/v1/traces`` with the device token.

A batch leaves the buffer only when Hangar answers 2xx (its partial-success
count of rejected spans is recorded); on no answer or a 5xx/429 it stays and
is sent again after a backoff, in the same order. A 413 halves the batch. Any
other 4xx means Hangar will never take these spans: they are counted as
rejected so one bad batch cannot block the rest. Re-sending is safe: Hangar
keeps a span once (trace id + span id)."""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from . import otlp
from .buffer import Buffer
from .client import Client, Offline, ServerError, Unauthorized
from .clock import Clock

log = logging.getLogger("hangar_edge.uploader")
TRACES_PATH = "v1/traces"


class Uploader:
    def __init__(self, buffer: Buffer, client: Client, clock: Clock, *,
                 interval: float = 5.0, backoff_max: float = 60.0, max_spans: int = 2000,
                 on_unauthorized: Callable[[Unauthorized], None] = lambda exc: None):
        self.buffer = buffer
        self.client = client
        self.clock = clock
        self.interval = interval
        self.backoff_max = backoff_max
        self.max_spans = max_spans
        self.on_unauthorized = on_unauthorized
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.failures = 0
        self.last_error = ""
        self.requests = 0

    def send_once(self) -> int | None:
        """Send the oldest batch; the spans delivered, 0 when the buffer is
        empty, None when it must wait (offline, Hangar busy)."""
        batch = self.buffer.next_batch(max_spans=self.max_spans)
        if batch is None:
            return 0
        body = otlp.join(batch.groups)
        try:
            response = self.client.request(
                "POST", TRACES_PATH, body=body, ok=(200, 202, 204),
                headers={"Content-Type": otlp.PROTOBUF})
        except Offline as exc:
            self.buffer.release()
            self._failed(f"offline: {exc}")
            return None
        except Unauthorized as exc:
            self.buffer.release()
            self._failed(str(exc))
            self.on_unauthorized(exc)
            return None
        except ServerError as exc:
            if exc.status == 413 and batch.count > 1:
                self.buffer.release()
                self.max_spans = max(1, batch.count // 2)
                return self.send_once()
            if 400 <= exc.status < 500 and exc.status not in (408, 429):
                log.error("Hangar refused %d spans for good (%s); counting them as rejected",
                          batch.count, exc)
                self.buffer.ack(batch, rejected=batch.count)
                return batch.count
            self.buffer.release()
            self._failed(str(exc), retry_after=exc.retry_after)
            return None
        self.requests += 1
        rejected, message = otlp.parse_response(response.body)
        if rejected:
            log.warning("Hangar rejected %d of %d spans: %s", rejected, batch.count, message)
        self.buffer.ack(batch, rejected=rejected)
        self.failures, self.last_error, self._retry_after = 0, "", None
        return batch.count

    _retry_after: float | None = None

    def _failed(self, error: str, retry_after: float | None = None) -> None:
        self.failures += 1
        self.last_error = error
        self._retry_after = retry_after

    def delay(self) -> float:
        if self._retry_after:
            return self._retry_after
        return min(self.backoff_max, 2.0 ** min(self.failures - 1, 10))

    def drain(self, deadline: float | None = None) -> int:
        """Send until the buffer is empty or a send must wait (or the
        ``time.monotonic()`` deadline passes); spans delivered."""
        total = 0
        while not self.stopping.is_set() and (deadline is None or time.monotonic() < deadline):
            sent = self.send_once()
            if not sent:
                break
            total += sent
        return total

    def run(self) -> None:
        while not self.stopping.is_set():
            self.drain()
            wait = self.delay() if self.failures else self.interval
            self.clock.wait(self.wake, wait)
            self.wake.clear()

"""Time, injectable. Every timer of the agent (poll interval, jitter, restart
backoff, status and run-record intervals, span timestamps) reads a ``Clock``:

* ``SystemClock`` — the wall clock;
* ``OffsetFileClock`` — the wall clock plus an offset in seconds read from a
  file (``--clock-file``): a test moves a real agent process days ahead by
  rewriting one number, and every timer of the agent follows;
* ``ManualClock`` — in-process tests: time moves only when told to.

Waits are on the clock, not on the wall: ``wait(event, seconds)`` returns when
the event is set or the clock has advanced by ``seconds``, re-reading the clock
at least every ``tick`` wall seconds."""
from __future__ import annotations

import threading
import time
from pathlib import Path


class Clock:
    tick = 0.2

    def now(self) -> float:
        raise NotImplementedError

    def now_ns(self) -> int:
        return int(self.now() * 1e9)

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """True if ``event`` was set, False once ``seconds`` of clock time passed."""
        deadline = self.now() + max(0.0, seconds)
        while True:
            remaining = deadline - self.now()
            if remaining <= 0:
                return event.is_set()
            if event.wait(min(remaining, self.tick)):
                return True


class SystemClock(Clock):
    def now(self) -> float:
        return time.time()

    def wait(self, event: threading.Event, seconds: float) -> bool:
        return event.wait(max(0.0, seconds))


class OffsetFileClock(Clock):
    """Wall time + the number of seconds in ``path`` (missing or unreadable: 0)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._offset = 0.0
        self._read_at = -1.0

    def offset(self) -> float:
        wall = time.monotonic()
        if wall - self._read_at >= 0.05:
            try:
                self._offset = float(self.path.read_text().strip() or 0)
            except (OSError, ValueError):
                pass  # keep the last good value while the file is being rewritten
            self._read_at = wall
        return self._offset

    def now(self) -> float:
        return time.time() + self.offset()


class ManualClock(Clock):
    tick = 0.01

    def __init__(self, start: float = 1_800_000_000.0):
        self._now = start
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds

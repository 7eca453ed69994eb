"""A run's events: numbered 1, 2, 3… per run (the SSE ids a dropped stream
resumes from), held in memory for the run's live subscribers (``RunLog``) and
read back from PostgreSQL for the others (``read_events``)."""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from .models import ACTIVE, RunEvent, ThreadRun


@dataclass
class RunLog:
    """A run's events so far, for its live subscribers."""

    run_id: str
    events: list[tuple[int, str, object]] = field(default_factory=list)
    closed: bool = False
    closed_at: float = 0.0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    unsaved: list[tuple[int, str, object]] = field(default_factory=list)

    def emit(self, event: str, data) -> int:
        seq = len(self.events) + 1
        item = (seq, event, data)
        self.events.append(item)
        self.unsaved.append(item)
        self._wake()
        return seq

    def close(self) -> None:
        self.closed, self.closed_at = True, time.monotonic()
        self._wake()

    def _wake(self) -> None:
        # Waiters hold the event they saw; a new one replaces it for the next wait.
        woken, self.changed = self.changed, asyncio.Event()
        woken.set()


def read_events(run_id: str, after: int) -> tuple[list[tuple[int, str, object]], bool]:
    """Stored events after ``after`` and whether the run is still active."""
    rows = list(RunEvent.objects.filter(run_id=run_id, seq__gt=after).order_by("seq")
                .values_list("seq", "event", "data")[:1000])
    status = ThreadRun.objects.filter(pk=run_id).values_list("status", flat=True).first()
    return rows, status in ACTIVE

"""The local span buffer: one SQLite file in the data directory, spans in
arrival order, capped in bytes, oldest dropped first.

* ``add`` stores spans in one transaction (the local receiver answers 2xx only
  after it), then drops the oldest spans while the total is over the cap;
  every drop is counted.
* ``next_batch`` reads the oldest spans (never more than a request's worth),
  ``ack`` deletes them once Hangar has answered 2xx. A crash between the two
  re-sends the batch: the spans keep their ids, and Hangar stores a span once.
* The counters (accepted, uploaded, dropped, rejected) live in the same file,
  so they survive a restart and always add up:
  ``accepted = uploaded + dropped + rejected + buffered``.
"""
from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path

from .otlp import Group

SCHEMA = """
CREATE TABLE IF NOT EXISTS context (
    id INTEGER PRIMARY KEY, resource BLOB NOT NULL, scope BLOB NOT NULL,
    UNIQUE (resource, scope));
CREATE TABLE IF NOT EXISTS span (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, context INTEGER NOT NULL,
    body BLOB NOT NULL, size INTEGER NOT NULL, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS counter (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
COUNTERS = ("accepted", "uploaded", "dropped", "rejected", "spans", "bytes")
DEFAULT_MAX_BYTES = 64 * 1024 * 1024


@dataclass
class Batch:
    first: int
    last: int
    count: int
    size: int
    groups: list[Group] = field(default_factory=list)


class Buffer:
    def __init__(self, path: str | Path, *, max_bytes: int = DEFAULT_MAX_BYTES):
        self.path = Path(path)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # durable across a crash of the agent
        self._db.executescript(SCHEMA)
        self._db.executemany("INSERT OR IGNORE INTO counter VALUES (?, 0)",
                             [(name,) for name in COUNTERS])
        self._contexts: dict[tuple[bytes, bytes], int] = {
            (bytes(r), bytes(s)): i
            for i, r, s in self._db.execute("SELECT id, resource, scope FROM context")}
        self._inflight: Batch | None = None
        self._inflight_dropped = 0
        self._reconcile()

    def _reconcile(self) -> None:
        """Counters of spans and bytes from the rows (after a crash mid-way)."""
        count, size = self._db.execute(
            "SELECT count(*), coalesce(sum(size), 0) FROM span").fetchone()
        self._db.execute("UPDATE counter SET value = ? WHERE name = 'spans'", (count,))
        self._db.execute("UPDATE counter SET value = ? WHERE name = 'bytes'", (size,))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _context(self, resource: bytes, scope: bytes) -> int:
        key = (resource, scope)
        found = self._contexts.get(key)
        if found is None:
            self._db.execute("INSERT OR IGNORE INTO context (resource, scope) VALUES (?, ?)",
                             key)
            found = self._db.execute("SELECT id FROM context WHERE resource = ? AND scope = ?",
                                     key).fetchone()[0]
            self._contexts[key] = found
        return found

    def _bump(self, **deltas: int) -> None:
        self._db.executemany("UPDATE counter SET value = value + ? WHERE name = ?",
                             [(v, k) for k, v in deltas.items() if v])

    def add(self, groups: list[Group], *, at: float, rejected: int = 0) -> int:
        """Store the spans of ``groups`` durably; returns how many. Spans the
        receiver rejected are counted as accepted-and-rejected."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                rows, size = [], 0
                for group in groups:
                    context = self._context(group.resource, group.scope)
                    for body in group.spans:
                        rows.append((context, body, len(body), at))
                        size += len(body)
                self._db.executemany(
                    "INSERT INTO span (context, body, size, at) VALUES (?, ?, ?, ?)", rows)
                self._bump(accepted=len(rows) + rejected, rejected=rejected, spans=len(rows),
                           bytes=size)
                self._enforce_cap()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return len(rows)

    def _counter(self, name: str) -> int:
        return self._db.execute("SELECT value FROM counter WHERE name = ?", (name,)).fetchone()[0]

    def _enforce_cap(self) -> None:
        excess = self._counter("bytes") - self.max_bytes
        while excess > 0:
            rows = self._db.execute("SELECT seq, size FROM span ORDER BY seq LIMIT 1000").fetchall()
            if not rows:
                return
            freed, last, count, inflight = 0, None, 0, 0
            for seq, size in rows:
                freed += size
                last, count = seq, count + 1
                if self._inflight and self._inflight.first <= seq <= self._inflight.last:
                    inflight += 1
                if freed >= excess:
                    break
            self._db.execute("DELETE FROM span WHERE seq <= ?", (last,))
            self._bump(dropped=count, spans=-count, bytes=-freed)
            self._inflight_dropped += inflight
            excess -= freed

    def next_batch(self, *, max_spans: int = 2000, max_bytes: int = 2 * 1024 * 1024
                   ) -> Batch | None:
        """The oldest buffered spans, at most ``max_spans`` and about
        ``max_bytes``; None when the buffer is empty."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, context, body, size FROM span ORDER BY seq LIMIT ?",
                (max_spans,)).fetchall()
            if not rows:
                return None
            contexts = {i: (bytes(r), bytes(s)) for i, r, s in self._db.execute(
                "SELECT id, resource, scope FROM context")}
            batch = Batch(first=rows[0][0], last=rows[0][0], count=0, size=0)
            current = None
            for seq, context, body, size in rows:
                if batch.count and batch.size + size > max_bytes:
                    break
                if current is None or current[0] != context:
                    resource, scope = contexts[context]
                    current = (context, Group(resource=resource, scope=scope))
                    batch.groups.append(current[1])
                current[1].spans.append(bytes(body))
                batch.last, batch.count, batch.size = seq, batch.count + 1, batch.size + size
            self._inflight, self._inflight_dropped = batch, 0
            return batch

    def ack(self, batch: Batch, *, rejected: int = 0) -> None:
        """Hangar stored ``batch`` (``rejected`` of its spans it refused)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                count, size = self._db.execute(
                    "SELECT count(*), coalesce(sum(size), 0) FROM span "
                    "WHERE seq BETWEEN ? AND ?", (batch.first, batch.last)).fetchone()
                self._db.execute("DELETE FROM span WHERE seq BETWEEN ? AND ?",
                                 (batch.first, batch.last))
                # Spans the cap dropped while they were on their way were delivered after all.
                delivered = count + self._inflight_dropped
                rejected = min(rejected, delivered)
                self._bump(uploaded=delivered - rejected, rejected=rejected,
                           dropped=-self._inflight_dropped, spans=-count, bytes=-size)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._inflight, self._inflight_dropped = None, 0

    def release(self) -> None:
        """The in-flight batch was not delivered; it stays (or stays dropped)."""
        with self._lock:
            self._inflight, self._inflight_dropped = None, 0

    def stats(self) -> dict[str, int]:
        with self._lock:
            values = dict(self._db.execute("SELECT name, value FROM counter"))
        values["buffered"] = values.pop("spans")
        return values

"""Dead letters and throughput of a Redis stream source (mixed into
``RedisSource``), in the format the reference agent writes them.

A consumer that fails a message ``max_deliveries`` times adds one entry to the
dead-letter stream and acknowledges the original (agents/reference/agent.py,
``StreamConsumer.failed``): ``source_id``, ``source_stream``, ``group``,
``input``, ``fields`` (every field of the message, a JSON object), ``error``,
``deliveries``, ``instance``.

Listing is newest first. A replay moves one entry in one Lua script (read, add
the original fields to the source, delete the dead letter), so two operators
replaying the same entry at once add it to the source once; purging "all"
removes what existed when it was asked, not a dead letter arriving meanwhile.

Throughput: Redis stream ids start with the millisecond the entry was added,
so the entries of the last minute are an ``XRANGE`` from that millisecond
(see ``deployments.streamstats``).
"""
from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import ClassVar

from .. import streamstats
from ..errors import NotFound
from .base import DeadLetter, Replayed

# Redis stream entry ids ("1733101234567-0"), each part below 2^64.
ENTRY_ID = re.compile(r"^[0-9]{1,20}-[0-9]{1,20}$")
MAX_PART = 2**64 - 1
CHUNK = 100

# KEYS[1] dead-letter stream, KEYS[2] source stream, ARGV[1] dead-letter id.
# Returns the new entry's id in the source, or false if the dead letter is gone.
_REPLAY = """
local found = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #found == 0 then return false end
local entry = found[1][2]
local values = {}
for i = 1, #entry, 2 do values[entry[i]] = entry[i + 1] end
local fields = {}
local ok, decoded = pcall(cjson.decode, values['fields'] or '')
if ok and type(decoded) == 'table' and next(decoded) ~= nil then
  for k, v in pairs(decoded) do
    if type(v) ~= 'string' then v = cjson.encode(v) end
    table.insert(fields, k)
    table.insert(fields, v)
  end
else
  fields = {'input', values['input'] or ''}
end
local id = redis.call('XADD', KEYS[2], '*', unpack(fields))
redis.call('XDEL', KEYS[1], ARGV[1])
return id
"""


def valid_id(entry_id: str) -> bool:
    """A Redis stream id Redis accepts: ``<ms>-<seq>``, each below 2⁶⁴."""
    return bool(ENTRY_ID.match(entry_id)) and all(
        int(part) <= MAX_PART for part in entry_id.split("-"))


def entry_time(entry_id: str) -> datetime:
    return datetime.fromtimestamp(int(entry_id.split("-", 1)[0]) / 1000, tz=UTC)


def _after(entry_id: str) -> str:
    ms, seq = entry_id.split("-", 1)
    return f"{ms}-{int(seq) + 1}"


def from_entry(entry_id: str, values: dict[str, str]) -> DeadLetter:
    try:
        fields = json.loads(values.get("fields") or "{}")
    except ValueError:
        fields = {}
    if not isinstance(fields, dict):
        fields = {"value": fields}
    try:
        deliveries = int(values.get("deliveries") or 0)
    except ValueError:
        deliveries = 0
    return DeadLetter(id=entry_id, at=entry_time(entry_id),
                      source_id=values.get("source_id", ""), error=values.get("error", ""),
                      deliveries=deliveries, input=values.get("input", ""), fields=fields,
                      instance=values.get("instance", ""),
                      source_stream=values.get("source_stream", ""),
                      group=values.get("group", ""))


class RedisDeadLetters:
    """Mixed into ``RedisSource``: uses its ``client``, ``_call`` and ``config``."""

    supports_dead_letters: ClassVar[bool] = True

    def dead_letter_count(self) -> int:
        return int(self._call(self.client.xlen, self.config.deadletter))

    def dead_letters(self, *, limit: int = 50, after: str | None = None) -> list[DeadLetter]:
        """Newest first; ``after`` (an id from the previous page) continues it."""
        if after is not None and not ENTRY_ID.match(after):
            after = f"{after}-0"  # a bare millisecond time
        if after is not None and not valid_id(after):
            after = None  # beyond any id: everything is older
        if after is not None and not any(int(part) for part in after.split("-")):
            return []  # nothing is older than 0-0
        top = f"({after}" if after else "+"
        entries = self._call(self.client.xrevrange, self.config.deadletter, top, "-",
                             count=limit)
        return [from_entry(i, v) for i, v in entries]

    def dead_letter(self, entry_id: str) -> DeadLetter:
        if not valid_id(entry_id):
            raise NotFound("Dead letter not found.")
        found = self._call(self.client.xrange, self.config.deadletter, entry_id, entry_id,
                           count=1)
        if not found:
            raise NotFound("Dead letter not found.")
        return from_entry(*found[0])

    def _ids_up_to_now(self):
        """Every id in the dead-letter stream at the time of the call, in chunks."""
        key = self.config.deadletter
        newest = self._call(self.client.xrevrange, key, "+", "-", count=1)
        if not newest:
            return
        last, start = newest[0][0], "-"
        while True:
            chunk = self._call(self.client.xrange, key, start, last, count=CHUNK)
            if not chunk:
                return
            yield [i for i, _ in chunk]
            if chunk[-1][0] == last:
                return
            start = f"({chunk[-1][0]}"

    def replay(self, ids: list[str] | None = None) -> Replayed:
        """Move ``ids`` (or, with ``None``, every dead letter there is now) back
        to the source stream, with the fields the message had."""
        script = self.client.register_script(_REPLAY)
        chunks = [ids] if ids is not None else self._ids_up_to_now()
        moved, new_ids, missing = [], [], []
        for chunk in chunks:
            for entry_id in chunk:
                if not valid_id(entry_id):
                    missing.append(entry_id)
                    continue
                new_id = self._call(script, keys=[self.config.deadletter, self.config.stream],
                                    args=[entry_id])
                if new_id:
                    moved.append(entry_id)
                    new_ids.append(new_id)
                else:
                    missing.append(entry_id)
        return Replayed(ids=moved, new_ids=new_ids, missing=missing)

    def purge(self, ids: list[str] | None = None) -> int:
        """Delete ``ids`` (or every dead letter there is now); how many went."""
        key = self.config.deadletter
        if ids is not None:
            ids = [i for i in ids if valid_id(i)]
            return int(self._call(self.client.xdel, key, *ids)) if ids else 0
        newest = self._call(self.client.xrevrange, key, "+", "-", count=1)
        if not newest:
            return 0
        return int(self._call(self.client.xtrim, key, minid=_after(newest[0][0]),
                              approximate=False))

    def throughput(self, window_s: int = 60) -> streamstats.Throughput:
        return self._call(streamstats.throughput, self.client, source=self.config.stream,
                          output=self.config.output, window_s=window_s)

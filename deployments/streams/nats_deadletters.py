"""Dead letters of a NATS JetStream source (mixed into ``NatsSource``), in the
format the reference agent publishes them: the original message body on the
dead-letter stream's subject, with headers ``Hangar-Source-Stream``,
``Hangar-Source-Seq``, ``Hangar-Source-Subject``, ``Hangar-Group``,
``Hangar-Error``, ``Hangar-Deliveries`` and ``Hangar-Instance``
(agents/reference/agent.py, ``NatsConsumer.failed``). A dead letter's id is its
sequence in the dead-letter stream.

Listing is newest first (by sequence, skipping deleted ones). A replay
publishes the body back to its source subject with a ``Nats-Msg-Id`` derived
from the dead letter, so JetStream's duplicate window drops a second replay of
the same one made meanwhile, then deletes the dead letter. Purging "all"
removes up to the last sequence there was when asked.
"""
from __future__ import annotations

import json
from datetime import UTC
from typing import ClassVar

import nats.js.errors

from ..errors import NotFound
from .base import DeadLetter, Replayed

MAX_SEQ = 2**63 - 1
SCAN = 20  # sequences looked at per dead letter wanted (deleted ones are skipped)


def valid_seq(entry_id: str) -> bool:
    return entry_id.isdigit() and 0 < int(entry_id) <= MAX_SEQ


def _from_msg(msg) -> DeadLetter:
    h = msg.headers or {}
    body = (msg.data or b"").decode("utf-8", "replace")
    try:
        payload = json.loads(body)
    except ValueError:
        payload = body
    fields = payload if isinstance(payload, dict) else {"input": body}
    text = fields.get("input", body) if isinstance(fields, dict) else body
    try:
        deliveries = int(h.get("Hangar-Deliveries") or 0)
    except ValueError:
        deliveries = 0
    at = msg.time.astimezone(UTC) if getattr(msg, "time", None) else None
    return DeadLetter(id=str(msg.seq), at=at, source_id=h.get("Hangar-Source-Seq", ""),
                      error=h.get("Hangar-Error", ""), deliveries=deliveries,
                      input=str(text), fields=fields, instance=h.get("Hangar-Instance", ""),
                      source_stream=h.get("Hangar-Source-Stream", ""),
                      group=h.get("Hangar-Group", ""))


class NatsDeadLetters:
    """Mixed into ``NatsSource``: uses its ``_do`` (one connection per call)."""

    supports_dead_letters: ClassVar[bool] = True

    async def _state(self, js):
        try:
            return (await js.stream_info(self.config.deadletter)).state
        except nats.js.errors.NotFoundError:
            return None

    def dead_letter_count(self) -> int:
        async def work(js):
            state = await self._state(js)
            return int(state.messages) if state else 0
        return self._do(work)

    def dead_letters(self, *, limit: int = 50, after: str | None = None) -> list[DeadLetter]:
        if after is not None and not valid_seq(after):
            return [] if after.isdigit() and int(after) == 0 else self.dead_letters(limit=limit)
        name = self.config.deadletter

        async def work(js):
            state = await self._state(js)
            if state is None or not state.messages:
                return []
            seq = min(state.last_seq, int(after) - 1) if after else state.last_seq
            found, budget = [], limit * SCAN + 100
            while seq >= state.first_seq and len(found) < limit and budget > 0:
                try:
                    found.append(_from_msg(await js.get_msg(name, seq)))
                except nats.js.errors.NotFoundError:
                    pass
                seq, budget = seq - 1, budget - 1
            return found
        return self._do(work)

    def dead_letter(self, entry_id: str) -> DeadLetter:
        if not valid_seq(entry_id):
            raise NotFound("Dead letter not found.")

        async def work(js):
            try:
                return _from_msg(await js.get_msg(self.config.deadletter, int(entry_id)))
            except nats.js.errors.NotFoundError:
                return None
        found = self._do(work)
        if found is None:
            raise NotFound("Dead letter not found.")
        return found

    def replay(self, ids: list[str] | None = None) -> Replayed:
        c = self.config
        wanted = None if ids is None else [i for i in ids if valid_seq(i)]
        bad = [] if ids is None else [i for i in ids if not valid_seq(i)]

        async def work(js):
            moved, new_ids, missing = [], [], list(bad)
            if wanted is None:
                state = await self._state(js)
                seqs = range(state.first_seq, state.last_seq + 1) if state and state.messages \
                    else range(0)
            else:
                seqs = [int(i) for i in wanted]
            for seq in seqs:
                try:
                    msg = await js.get_msg(c.deadletter, seq)
                except nats.js.errors.NotFoundError:
                    if wanted is not None:
                        missing.append(str(seq))
                    continue
                subject = (msg.headers or {}).get("Hangar-Source-Subject") or c.subjects[0]
                ack = await js.publish(subject, msg.data or b"", headers={
                    "Nats-Msg-Id": f"hangar-replay-{c.deadletter}-{seq}"})
                try:
                    await js.delete_msg(c.deadletter, seq)
                except nats.js.errors.NotFoundError:
                    pass
                if ack.duplicate:
                    missing.append(str(seq))
                else:
                    moved.append(str(seq))
                    new_ids.append(str(ack.seq))
            return Replayed(ids=moved, new_ids=new_ids, missing=missing)
        return self._do(work)

    def purge(self, ids: list[str] | None = None) -> int:
        name = self.config.deadletter

        async def work(js):
            if ids is not None:
                gone = 0
                for i in ids:
                    if not valid_seq(i):
                        continue
                    try:
                        gone += bool(await js.delete_msg(name, int(i)))
                    except nats.js.errors.NotFoundError:
                        pass
                return gone
            state = await self._state(js)
            if state is None or not state.messages:
                return 0
            await js.purge_stream(name, seq=state.last_seq + 1)
            after = await self._state(js)
            return int(state.messages) - int(after.messages if after else 0)
        return self._do(work)

    def throughput(self, window_s: int = 60):
        return None  # JetStream sequences carry no time: not measured for this kind

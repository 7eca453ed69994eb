"""Calling the agent for a run: the gateway's balancer picks a replica, the
agent's ``POST /invoke`` gets ``{"input", "thread": {"id", "state"}}`` with
``Accept: text/event-stream``, and what it streams becomes the run's events
(``values`` — its state so far, kept as the run's partial state — ``updates``,
tokens as ``messages``/``events``); its final answer (``done``, or a JSON body
from an agent that does not stream) carries the new ``state``.

The calls go through a keep-alive pool (aiohttp, as the gateway's
``upstream_session``): a call read to its end gives its connection back for the
next run; a call cut short — interrupted, rolled back, cancelled, timed out or
failed — closes its connection then and there (``response.close()`` does not
wait, so nothing can stop it half-way), and the agent sees its caller go away.
"""
from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass

import aiohttp

from gateway import balancer, split
from gateway.proxy import Outcome, traceparent

from . import actions
from .actions import Admission, Assistant
from .asyncdb import db
from .models import RunStatus, ThreadRun
from .runlog import RunLog


@dataclass
class Spec:
    """What executing a run needs (read once when it starts)."""

    run_id: str
    thread_id: str | None
    key: tuple[str, str, str]
    agent: str
    input: object
    state: object
    timeout_s: float
    caller: str


class AgentFailed(Exception):
    pass


def spec_of(run: ThreadRun, key: tuple[str, str, str], state) -> Spec:
    return Spec(run_id=str(run.pk), thread_id=str(run.thread_id) if run.thread_id else None,
                key=key, agent=key[1], input=run.input, state=state,
                timeout_s=run.timeout_s, caller=(run.metadata or {}).get("hangar_caller", ""))


def admitted_spec(admission: Admission, assistant: Assistant) -> Spec:
    """A run this process has just admitted: all it needs is in hand (no query)."""
    return spec_of(admission.run, assistant.key, admission.state)


def load_spec(run_id: str) -> Spec | None:
    """A run made running elsewhere (the next of a queue, the sweep): one query."""
    run = (ThreadRun.objects.select_related("agent__team", "thread")
           .filter(pk=run_id, status=RunStatus.RUNNING).first())
    if run is None:
        return None
    state = run.thread.values if run.thread_id is not None else None
    return spec_of(run, (run.agent.team.slug, run.agent.slug, run.environment), state)


class AgentCalls:
    """The agent call of ``Engine`` (which holds ``gateway``, ``client`` and ``owner``)."""

    async def _call(self, spec: Spec, route, runlog: RunLog, outcome: Outcome):
        replica = balancer.pick(split.pool(route, thread=spec.thread_id))
        if replica is None and route.scale_to_zero_after_s is not None and self.gateway.zero:
            with contextlib.suppress(Exception):
                route = await self.gateway.zero.hold(route)
                replica = balancer.pick(split.pool(route, thread=spec.thread_id))
        if replica is None:
            raise AgentFailed(f"{route.name} has no ready replica")
        body: dict = {"input": spec.input}
        if spec.thread_id is not None:
            body["thread"] = {"id": spec.thread_id, "state": spec.state}
        outcome.traceparent, _ = traceparent({})
        outcome.replica = replica.name
        headers = {"accept": "text/event-stream", "content-type": "application/json",
                   "traceparent": outcome.traceparent, "x-hangar-run": spec.run_id,
                   "x-hangar-caller": spec.caller or "threads"}
        replica.outstanding += 1
        response = None
        read_to_end = False
        try:
            response = await self.client.post(replica.url + "/invoke", headers=headers,
                                              data=json.dumps(body).encode(),
                                              allow_redirects=False, compress=None)
            replica.answered(response.status)
            outcome.status = response.status
            if response.status >= 400:
                text = (await response.content.read(500)).decode(errors="replace")
                raise AgentFailed(f"{replica.name} answered {response.status}: {text}")
            if "text/event-stream" not in response.headers.get("content-type", ""):
                result = json.loads(await response.read() or b"null")
                read_to_end = True
                has_state = isinstance(result, dict) and "state" in result
                return result, result.get("state") if has_state else None, has_state
            answer = await self._consume(spec, response, runlog, outcome)
            await response.read()  # the stream's end: its connection can serve the next run
            read_to_end = True
            return answer
        except (aiohttp.ClientError, OSError) as exc:
            replica.answered(502)
            raise AgentFailed(f"{replica.name} failed: {exc or type(exc).__name__}") from None
        except ValueError as exc:
            raise AgentFailed(f"{replica.name} answered what is not JSON: {exc}") from None
        finally:
            replica.outstanding -= 1
            if response is not None:
                if read_to_end:
                    response.release()
                else:  # cut short (cancelled, timed out, failed): the agent sees it close
                    response.close()

    async def _consume(self, spec: Spec, response, runlog: RunLog, outcome: Outcome):
        event, data_lines = "", []
        async for line in sse_lines(response):
            if outcome.first_byte_at is None:
                outcome.first_byte_at = time.monotonic()
            if line.startswith(":"):
                continue
            if line:
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "event":
                    event = value
                elif name == "data":
                    data_lines.append(value)
                continue
            if not data_lines and not event:
                continue
            try:
                data = json.loads("\n".join(data_lines)) if data_lines else None
            except ValueError:
                data = "\n".join(data_lines)
            kind, event, data_lines = event or "message", "", []
            if kind == "done":
                has_state = isinstance(data, dict) and "state" in data
                return data, (data.get("state") if has_state else None), has_state
            if kind == "error":
                detail = data.get("detail") if isinstance(data, dict) else data
                raise AgentFailed(f"the agent failed: {detail}")
            if kind == "values":
                runlog.emit("values", data)
                runlog.emit("events", {"event": "on_chain_stream", "run_id": spec.run_id,
                                       "data": {"chunk": data}})
                await db(actions.save_partial)(spec.run_id, self.owner, data)
            elif kind == "updates":
                runlog.emit("updates", data)
            elif kind == "message":
                token = data.get("token") if isinstance(data, dict) else data
                chunk = {"type": "AIMessageChunk", "content": f"{token} "}
                runlog.emit("messages", [chunk, {"run_id": spec.run_id}])
                runlog.emit("events", {"event": "on_chat_model_stream", "run_id": spec.run_id,
                                       "data": {"chunk": chunk}})
            else:
                runlog.emit("custom", {"event": kind, "data": data})
        raise AgentFailed("the agent's stream ended without its final answer (done)")


async def sse_lines(response):
    """The lines of an SSE body without their ends, however long (a ``values``
    event carries a whole state, beyond aiohttp's own line limit)."""
    pending: list[bytes] = []
    async for chunk in response.content.iter_any():
        *lines, rest = chunk.split(b"\n")
        if lines:
            lines[0] = b"".join([*pending, lines[0]])
            pending = []
            for line in lines:
                yield line.removesuffix(b"\r").decode(errors="replace")
        pending.append(rest)
    if any(pending):
        yield b"".join(pending).removesuffix(b"\r").decode(errors="replace")

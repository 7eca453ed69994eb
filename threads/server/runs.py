"""The run routes: create a run (in the background, streamed or waited for) on a
thread or stateless, list, read, delete, cancel, join and join its stream (from
``Last-Event-ID``)."""
from __future__ import annotations

import asyncio
import contextlib
import json

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder

from deployments.errors import DomainError, Invalid

from .. import actions
from ..actions import STREAM_MODES
from ..asyncdb import db
from ..invoke import admitted_spec
from .http import Request, route
from .reads import _page, list_runs, run_json, run_result, run_row


class RunRoutes:
    """Routes of ``ThreadsServer``: runs."""

    @route("POST", "threads/{thread_id}/runs")
    async def create_run(self, request, send):
        return await self._create(request, send, request.params["thread_id"], "background")

    @route("POST", "threads/{thread_id}/runs/stream")
    async def stream_run(self, request, send):
        return await self._create(request, send, request.params["thread_id"], "stream")

    @route("POST", "threads/{thread_id}/runs/wait")
    async def wait_run(self, request, send):
        return await self._create(request, send, request.params["thread_id"], "wait")

    @route("POST", "runs")
    async def create_stateless(self, request, send):
        return await self._create(request, send, None, "background")

    @route("POST", "runs/stream")
    async def stream_stateless(self, request, send):
        return await self._create(request, send, None, "stream")

    @route("POST", "runs/wait")
    async def wait_stateless(self, request, send):
        return await self._create(request, send, None, "wait")

    async def _create(self, request: Request, send, thread_id, mode: str):
        body = request.json()
        assistant = await self.assistant(request, body.get("assistant_id"))
        modes = body.get("stream_mode") or ["values"]
        modes = [modes] if isinstance(modes, str) else modes
        if not isinstance(modes, list) or not all(m in STREAM_MODES for m in modes):
            raise Invalid({"stream_mode": [f"Use some of {', '.join(sorted(STREAM_MODES))}."]})
        on_disconnect = body.get("on_disconnect") or ("cancel" if mode == "wait"
                                                      else "continue")
        if on_disconnect not in ("cancel", "continue"):
            raise Invalid({"on_disconnect": ["Use cancel or continue."]})
        options = {"stream_mode": modes, "on_disconnect": on_disconnect,
                   "config": body.get("config"), "context": body.get("context")}
        metadata = body.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            raise Invalid({"metadata": ["Give an object."]})
        metadata = {**(metadata or {}), "hangar_caller": request.caller.ident}
        if thread_id is not None:
            actions.parse_uuid(thread_id)
        admission = await db(actions.admit)(
            assistant, thread_id=thread_id, owner=self.engine.owner, input=body.get("input"),
            options=options, metadata=metadata, strategy=body.get("multitask_strategy"),
            if_not_exists=body.get("if_not_exists") or "reject", actor=self.actor(request))
        run = admission.run
        self.engine.stop_runs(admission.stop)
        if admission.start:
            self.engine.launch(run.pk, admitted_spec(admission, assistant))
        where = (f"/threads/{run.thread_id}/runs/{run.pk}" if run.thread_id
                 else f"/runs/{run.pk}")
        located = {"content-location": request.base + where}
        if mode == "background":
            return 200, run_json(run, assistant.agent_slug), located
        if mode == "wait":
            return await self._wait(request, str(run.pk), on_disconnect, located)
        if run.thread_id:
            located["location"] = request.base + where + "/stream"
        await self._stream(request, send, str(run.pk), modes, 0, on_disconnect, located)
        return None

    async def _wait(self, request, run_id: str, on_disconnect: str, headers: dict):
        gone = asyncio.get_running_loop().create_task(self._disconnected(request.receive))
        ended = asyncio.get_running_loop().create_task(self._drain(run_id))
        try:
            await asyncio.wait({gone, ended}, return_when=asyncio.FIRST_COMPLETED)
            if not ended.done():
                if on_disconnect == "cancel":
                    await self._cancel(request, run_id, "interrupt")
                return None
        finally:
            gone.cancel()
            ended.cancel()
        status, payload = await db(run_result)(run_id)
        return status, payload, headers

    async def _drain(self, run_id: str) -> None:
        async for _ in self.engine.follow(run_id):
            pass

    @staticmethod
    async def _disconnected(receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return

    async def _stream(self, request: Request, send, run_id: str, modes, after: int,
                      on_disconnect: str, headers: dict) -> None:
        raw = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-store"),
               (b"x-accel-buffering", b"no")]
        raw += [(k.encode(), v.encode()) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": 200, "headers": raw})
        wanted = set(modes) | {"metadata", "error"}
        if "messages-tuple" in wanted:
            wanted.add("messages")
        queue: asyncio.Queue = asyncio.Queue()
        done = object()

        async def produce():
            try:
                async for item in self.engine.follow(run_id, after):
                    await queue.put(item)
            finally:
                await queue.put(done)

        loop = asyncio.get_running_loop()
        producer = loop.create_task(produce())
        gone = loop.create_task(self._disconnected(request.receive))
        heartbeat = settings.HANGAR_THREADS_HEARTBEAT_S
        try:
            while True:
                getter = loop.create_task(queue.get())
                finished, _ = await asyncio.wait({getter, gone}, timeout=heartbeat,
                                                 return_when=asyncio.FIRST_COMPLETED)
                if gone in finished:
                    getter.cancel()
                    if on_disconnect == "cancel":
                        with contextlib.suppress(DomainError):
                            await self._cancel(request, run_id, "interrupt")
                    return
                if getter not in finished:
                    getter.cancel()
                    await send({"type": "http.response.body", "body": b": heartbeat\n\n",
                                "more_body": True})
                    continue
                item = getter.result()
                if item is done:
                    break
                seq, event, data = item
                if event not in wanted:
                    continue
                chunk = f"event: {event}\ndata: {json.dumps(data, cls=DjangoJSONEncoder)}\n" \
                        f"id: {seq}\n\n"
                await send({"type": "http.response.body", "body": chunk.encode(),
                            "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            producer.cancel()
            gone.cancel()

    async def _cancel(self, request, run_id: str, action: str):
        def cancel():
            run = actions.get_run(request.team_id, run_id)
            return actions.cancel_run(run, action=action, actor=self.actor(request),
                                      owner=self.engine.owner)
        done = await db(cancel)()
        self.engine.cancel_local(run_id)
        if done.next is not None:
            self.engine.launch(done.next.pk)
        return done

    @route("GET", "threads/{thread_id}/runs")
    async def list_runs(self, request, send):
        limit, offset = _page({"limit": request.arg("limit", 10),
                               "offset": request.arg("offset", 0)})
        return 200, await db(list_runs)(request.team_id, request.params["thread_id"], limit,
                                        offset, request.arg("status"))

    @route("GET", "threads/{thread_id}/runs/{run_id}")
    async def get_run(self, request, send):
        run = await db(run_row)(request.team_id, request.params["run_id"],
                                request.params["thread_id"])
        return 200, run_json(run)

    @route("DELETE", "threads/{thread_id}/runs/{run_id}")
    async def delete_run(self, request, send):
        def remove():
            run = actions.get_run(request.team_id, request.params["run_id"],
                                  request.params["thread_id"])
            actions.delete_run(run, actor=self.actor(request))
        await db(remove)()
        return 204, None

    @route("POST", "threads/{thread_id}/runs/{run_id}/cancel")
    async def cancel_run(self, request, send):
        run_id = request.params["run_id"]
        await db(actions.get_run)(request.team_id, run_id, request.params["thread_id"])
        await self._cancel(request, run_id, request.arg("action", "interrupt"))
        if request.arg("wait") in ("1", "true"):
            await self._drain(run_id)
        return 204, None

    @route("GET", "threads/{thread_id}/runs/{run_id}/join")
    async def join_run(self, request, send):
        run_id = request.params["run_id"]
        await db(actions.get_run)(request.team_id, run_id, request.params["thread_id"])
        return await self._wait(request, run_id, "continue", {})

    @route("GET", "threads/{thread_id}/runs/{run_id}/stream")
    async def join_stream(self, request, send):
        run = await db(run_row)(request.team_id, request.params["run_id"],
                                request.params["thread_id"])
        modes = request.query.get("stream_mode") or run.options.get("stream_mode") or [
            "values"]
        if not all(m in STREAM_MODES for m in modes):
            raise Invalid({"stream_mode": [f"Use some of {', '.join(sorted(STREAM_MODES))}."]})
        last = request.headers.get("last-event-id", "").strip()
        after = int(last) if last.isdigit() else 0
        on_disconnect = ("cancel" if request.arg("cancel_on_disconnect") in ("true", "1")
                         else "continue")
        where = f"/threads/{run.thread_id}/runs/{run.pk}"
        await self._stream(request, send, str(run.pk), modes, after, on_disconnect,
                           {"location": request.base + where + "/stream"})
        return None

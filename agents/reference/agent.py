#!/usr/bin/env python3
"""Hangar reference agent: honours the agent contract in every pattern.

Standard library only; Redis (stream mode) and OpenTelemetry (tracing) are
imported lazily when asked for. Run it from anywhere::

    AGENT_MODE=realtime PORT=8080 python agents/reference/agent.py

Patterns (``AGENT_MODE``):

realtime (default)
    HTTP on ``AGENT_BIND`` (127.0.0.1) port ``PORT`` (8080)::

        GET  /healthz        200 {"status": "ok", "inflight": n, "instance": ...}
        GET  /readyz         200 when ready, 503 otherwise
        POST /invoke         {"input": "...", "thread_id"?: "..."} ->
                             {"output", "model", "usage": {"input_tokens", "output_tokens"},
                              "instance", "thread_id"?}
        POST /invoke/stream  (or /invoke with "Accept: text/event-stream"): Server-Sent
                             Events, one ``data: {"token", "index"}`` per output token,
                             then ``event: done`` with the whole result
        GET  /metrics        JSON counters
        GET  /ws             WebSocket: a text message ``{"input": "..."}`` is answered
                             by one ``{"token", "index"}`` message per output token, then
                             ``{"event": "done", ...}`` with the whole result; any other
                             text or binary message is echoed; ``{"close": code,
                             "reason"?}`` makes the agent close with that code; the code
                             a peer closes with is logged and echoed

    A thread run from Hangar adds ``"thread": {"id", "state"}`` to the body; the
    answer then carries the thread's new ``"state"`` (its ``messages`` with this
    turn's, and ``turns``), and a streamed answer sends ``event: values`` with the
    state so far (the user's message in) before the tokens and the final state
    before ``event: done``. Inputs may be text or ``{"messages": [...]}``.
batch
    Input from ``AGENT_INPUT_FILE`` or ``AGENT_INPUT`` (plain text, a JSON string, a
    JSON object with "input" and optional "thread_id", or ``{"items": [...]}`` to
    process many); prints the result (with ``items``, the count processed) as one
    JSON line, writes it to ``AGENT_OUTPUT_FILE`` if set; exits ``AGENT_EXIT_CODE`` (0).
    With ``TRACEPARENT`` set (W3C trace context), the job's root span ``batch_job``
    is a child of that span, so the job's trace is the one the control plane chose;
    it carries ``hangar.job.items``.
stream
    ``STREAM_KIND`` ``redis`` (default; a Redis Streams consumer group, needs ``redis``)
    or ``nats`` (a JetStream durable pull consumer, needs ``nats-py``): ``STREAM_URL``
    (or ``STREAM_REDIS_URL``), ``STREAM_NAME``, ``STREAM_GROUP`` (the group or durable),
    ``STREAM_SUBJECTS`` (nats), ``STREAM_OUTPUT``, ``STREAM_DEADLETTER``,
    ``STREAM_MAX_DELIVERIES`` (3), ``STREAM_CLAIM_IDLE_MS`` (1000, redis),
    ``STREAM_ACK_WAIT_MS`` (30000, nats), ``STREAM_BLOCK_MS`` (500), ``STREAM_BATCH``
    (10), ``STREAM_START_ID`` (0, redis). Hangar injects these for a stream deployment.
    Also serves /healthz (with ``lag``) and /readyz (ready = connected to the broker)
    on ``PORT``.

Model: an offline deterministic function of the input, never a network call, reported
under the name ``AGENT_MODEL`` (default gpt-4o-mini, a name genai-prices prices, so demo
runs show real cost figures); tokens are whitespace-separated words.
``AGENT_TOKEN_DELAY_MS`` paces streaming, ``AGENT_LATENCY_MS`` adds latency to every
invocation.

Rollout knobs (to try canary analysis): ``AGENT_ERROR_RATE`` (0..1) fails that share of
invocations, spread evenly and deterministically (0.3: the 4th, 7th, 10th… of every ten
fail with 500 and an error span); ``AGENT_TOKEN_MULTIPLIER`` (1) repeats the output that
many times, so tokens (and cost) per run grow by it with the same errors and latency.

Tracing: with ``OTEL_EXPORTER_OTLP_ENDPOINT`` set and opentelemetry-sdk plus
opentelemetry-exporter-otlp-proto-http importable, one ``invoke_agent`` span per
invocation with a child ``chat <model>`` span carrying GenAI attributes.

Fault knobs: ``AGENT_SLOW_START_S`` (listening but not ready this long),
``AGENT_SLOW_LISTEN_S`` (not even listening this long), ``AGENT_FAIL_READINESS=1``,
``AGENT_CRASH_AFTER=N`` (exit ``AGENT_EXIT_CODE``, default 1, after N invocations),
``AGENT_CRASH_AT_START=1``; in stream mode a message whose input is ``AGENT_POISON``
("poison"; empty for none) always fails, so it is dead-lettered. ``AGENT_DRAIN_S`` (3)
bounds the wait for in-flight work on SIGTERM; ``AGENT_LOG_PROBES=1`` also logs /healthz
and /readyz requests.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import select
import signal
import socket
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

AGENT_NAME = os.environ.get("HANGAR_AGENT") or "reference-agent"
INSTANCE = os.environ.get("HANGAR_INSTANCE") or f"{socket.gethostname()}-{os.getpid()}"
if not os.environ.get("HANGAR_INSTANCE") and os.getpid() == 1:
    # PID 1 in a container on the host network shares the host's name: tell replicas apart.
    INSTANCE += "-" + os.urandom(3).hex()
MAX_BODY = 1 << 20
GEN_AI_SYSTEM = "hangar-offline"


def env_str(name: str, default: str = "") -> str:
    value = os.environ.get(name, "")
    return value if value != "" else default


def env_float(name: str, default: float = 0.0) -> float:
    try:
        return float(os.environ.get(name) or default)
    except ValueError:
        log(f"ignoring {name}={os.environ.get(name)!r}: not a number")
        return default


def env_int(name: str, default: int = 0) -> int:
    return int(env_float(name, default))


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def exit_code(default: int) -> int:
    raw = os.environ.get("AGENT_EXIT_CODE", "")
    try:
        return int(raw) if raw.strip() else default
    except ValueError:
        return default


def log(message: str) -> None:
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
    # Batch keeps stdout for its one JSON result line; the other patterns log to stdout.
    batch = os.environ.get("AGENT_MODE", "").strip().lower() == "batch"
    stream = sys.stderr if batch else sys.stdout
    print(f"{stamp} {AGENT_NAME}[{INSTANCE}] {message}", file=stream, flush=True)


# The offline model ------------------------------------------------------------------

WORDS = (
    "amber", "anchor", "beacon", "breeze", "cobalt", "compass", "delta", "drift",
    "ember", "echo", "falcon", "fjord", "glacier", "granite", "harbor", "horizon",
    "indigo", "island", "juniper", "jetty", "kestrel", "keel", "lantern", "lagoon",
    "meadow", "mistral", "nebula", "north", "orbit", "oasis", "pilot", "prairie",
    "quartz", "quill", "raven", "ridge", "summit", "signal", "tide", "tundra",
    "umber", "updraft", "vector", "valley", "willow", "wharf", "xenon", "yonder",
    "zenith", "zephyr", "aurora", "basalt", "cirrus", "dune", "estuary", "fathom",
    "gale", "hangar", "ion", "jade", "kite", "lumen", "monsoon", "nimbus",
)


def count_tokens(text: str) -> int:
    return len(text.split())


class OfflineModel:
    """Deterministic: the same (model, input) always gives the same output."""

    def __init__(self, name: str):
        self.name = name

    def complete(self, text: str) -> str:
        digest = hashlib.sha256(f"{self.name}\0{text}".encode()).digest()
        words = text.split()
        echo = " ".join(words[:24]) if words else "(nothing)"
        if len(words) > 24:
            echo += f" (+{len(words) - 24} more)"
        picks = " ".join(WORDS[b % len(WORDS)] for b in digest[:6])
        return (f"[{self.name}] You said: {echo} | My thoughts: {picks}. "
                f"Reference {digest.hex()[:8]}.")


DEFAULT_MODEL = "gpt-4o-mini"  # priced by genai-prices; the answer is still offline
MODEL = OfflineModel(env_str("AGENT_MODEL", DEFAULT_MODEL))


# State and counters ----------------------------------------------------------------

class State:
    def __init__(self):
        self.lock = threading.Lock()
        self.started = time.monotonic()
        self.ready = False
        self.stopping = False
        self.inflight = 0
        self.counters = {"requests": 0, "invocations": 0, "errors": 0,
                         "input_tokens": 0, "output_tokens": 0}
        self.invokes_served = 0  # for AGENT_CRASH_AFTER
        self.attempts = 0  # for AGENT_ERROR_RATE
        self.stream: dict = {}  # stream mode: lag, pending, redis status

    def add(self, **deltas: int) -> None:
        with self.lock:
            for key, value in deltas.items():
                self.counters[key] = self.counters.get(key, 0) + value

    def enter(self) -> None:
        with self.lock:
            self.inflight += 1

    def leave(self) -> None:
        with self.lock:
            self.inflight -= 1

    def fails_now(self) -> bool:
        """Whether this invocation fails on purpose (AGENT_ERROR_RATE): exactly
        floor(n × rate) of the first n invocations fail, evenly spread."""
        rate = min(max(env_float("AGENT_ERROR_RATE", 0), 0.0), 1.0)
        if rate <= 0:
            return False
        with self.lock:
            self.attempts += 1
            n = self.attempts
        return int(n * rate + 1e-9) > int((n - 1) * rate + 1e-9)

    def snapshot(self) -> dict:
        with self.lock:
            data = dict(self.counters)
            data["inflight"] = self.inflight
        data["uptime_s"] = round(time.monotonic() - self.started, 3)
        return data

    def served_one(self) -> None:
        """Count an invocation served; crash on purpose after AGENT_CRASH_AFTER."""
        limit = env_int("AGENT_CRASH_AFTER", 0)
        with self.lock:
            self.invokes_served += 1
            served = self.invokes_served
        if limit > 0 and served >= limit:
            code = exit_code(1)
            log(f"AGENT_CRASH_AFTER={limit}: exiting with code {code}")
            sys.stdout.flush()
            os._exit(code)


STATE = State()


# Tracing (optional) ------------------------------------------------------------------

class _NullSpan:
    def set_attribute(self, *args, **kwargs):
        pass

    def set_attributes(self, *args, **kwargs):
        pass

    def record_exception(self, *args, **kwargs):
        pass

    def set_status(self, *args, **kwargs):
        pass


class Tracing:
    def __init__(self):
        self.tracer = None
        self.provider = None
        self._trace = None
        self._propagate = None

    def setup(self) -> None:
        if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or self.tracer is not None:
            return
        try:
            from opentelemetry import propagate, trace
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError as exc:
            log(f"tracing disabled: OpenTelemetry packages are not installed ({exc})")
            return
        attributes = {"service.instance.id": INSTANCE}
        if not os.environ.get("OTEL_SERVICE_NAME"):
            attributes["service.name"] = AGENT_NAME
        provider = TracerProvider(resource=Resource.create(attributes))
        # The exporter reads the endpoint and OTEL_EXPORTER_OTLP_HEADERS itself.
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        self.provider = provider
        self.tracer = provider.get_tracer("hangar.reference-agent", "1.0")
        self._trace = trace
        self._propagate = propagate
        log("tracing to " + os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"])

    @contextlib.contextmanager
    def span(self, name: str, kind: str = "INTERNAL", carrier: dict | None = None,
             attributes: dict | None = None):
        if self.tracer is None:
            yield _NullSpan()
            return
        context = None
        if carrier:
            with contextlib.suppress(Exception):
                context = self._propagate.extract(carrier)
        span_kind = getattr(self._trace.SpanKind, kind)
        with self.tracer.start_as_current_span(
            name, context=context, kind=span_kind,
            attributes={k: v for k, v in (attributes or {}).items() if v is not None},
        ) as span:
            yield span

    def error(self, span, exc: BaseException) -> None:
        if self.tracer is None:
            return
        span.record_exception(exc)
        span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, str(exc)))

    def shutdown(self, timeout_s: float = 3.0) -> None:
        """Flush and stop, bounded: an unreachable collector must not delay exit."""
        provider, self.provider, self.tracer = self.provider, None, None
        if provider is None:
            return

        def flush():
            with contextlib.suppress(Exception):
                provider.force_flush(int(timeout_s * 1000))
                provider.shutdown()

        worker = threading.Thread(target=flush, daemon=True)
        worker.start()
        worker.join(timeout_s)


TRACING = Tracing()


# One invocation -----------------------------------------------------------------------

def invoke(text: str, thread_id: str | None = None, *, emit=None, kind: str = "SERVER",
           carrier: dict | None = None, extra: dict | None = None) -> dict:
    """Run the model once, inside an ``invoke_agent`` span with a ``chat`` child.

    ``emit(index, token)`` is called per output token when streaming.
    """
    STATE.enter()
    try:
        root_attrs = {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": AGENT_NAME,
            "gen_ai.system": GEN_AI_SYSTEM,
            "gen_ai.request.model": MODEL.name,
            "gen_ai.conversation.id": thread_id,
            "hangar.instance": INSTANCE,
            **(extra or {}),
        }
        with TRACING.span("invoke_agent", kind, carrier, root_attrs) as root:
            try:
                latency = env_float("AGENT_LATENCY_MS", 0) / 1000
                if latency > 0:
                    time.sleep(latency)
                if STATE.fails_now():
                    raise InjectedFailure("injected failure (AGENT_ERROR_RATE)")
                llm_attrs = {
                    "gen_ai.operation.name": "chat",
                    "gen_ai.system": GEN_AI_SYSTEM,
                    "gen_ai.request.model": MODEL.name,
                }
                with TRACING.span(f"chat {MODEL.name}", "CLIENT", None, llm_attrs) as llm:
                    output = MODEL.complete(text)
                    repeat = max(1, env_int("AGENT_TOKEN_MULTIPLIER", 1))
                    if repeat > 1:
                        output = " ".join([output] * repeat)
                    tokens = output.split()
                    if emit is not None:
                        delay = env_float("AGENT_TOKEN_DELAY_MS", 0) / 1000
                        for index, token in enumerate(tokens):
                            emit(index, token)
                            if delay > 0 and index < len(tokens) - 1:
                                time.sleep(delay)
                    usage = {"input_tokens": count_tokens(text), "output_tokens": len(tokens)}
                    llm.set_attributes({
                        "gen_ai.response.model": MODEL.name,
                        "gen_ai.usage.input_tokens": usage["input_tokens"],
                        "gen_ai.usage.output_tokens": usage["output_tokens"],
                    })
            except Exception as exc:
                TRACING.error(root, exc)
                raise
        STATE.add(invocations=1, **usage)
        result = {"output": output, "model": MODEL.name, "usage": usage, "instance": INSTANCE}
        if thread_id is not None:
            result["thread_id"] = thread_id
        return result
    finally:
        STATE.leave()


class InjectedFailure(Exception):
    """A failure AGENT_ERROR_RATE asked for."""


def parse_payload(payload) -> tuple[str, str | None]:
    """(input text, thread id) from a decoded JSON payload; ValueError if unusable."""
    if isinstance(payload, str):
        return payload, None
    if not isinstance(payload, dict):
        raise ValueError("body must be a JSON object")
    if "input" not in payload:
        raise ValueError("missing field 'input'")
    text = payload["input"]
    if not isinstance(text, str):
        text = json.dumps(text, sort_keys=True)
    thread_id = payload.get("thread_id")
    if thread_id is not None and not isinstance(thread_id, str):
        thread_id = str(thread_id)
    return text, thread_id


# Threads (a thread run from Hangar's gateway) ----------------------------------------------

def thread_of(payload) -> dict | None:
    """``{"id", "state"}`` of a thread run's body, None for a stateless call."""
    thread = payload.get("thread") if isinstance(payload, dict) else None
    if thread is None:
        return None
    if not isinstance(thread, dict) or not thread.get("id"):
        raise ValueError("'thread' must be an object with an 'id'")
    state = thread.get("state")
    if state is not None and not isinstance(state, dict):
        raise ValueError("a thread's 'state' must be an object")
    return {"id": str(thread["id"]), "state": state or {}}


def thread_text(value) -> str:
    """The words of a thread run's input: a string, or LangGraph's
    ``{"messages": [...]}`` (the last message's content)."""
    if isinstance(value, dict) and isinstance(value.get("messages"), list) and value["messages"]:
        last = value["messages"][-1]
        value = last.get("content", "") if isinstance(last, dict) else last
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def thread_turn(state: dict, text: str, output: str | None) -> dict:
    """The thread's new state: its messages with this turn's (the answer once
    there is one) and the count of turns answered."""
    messages = [*state.get("messages", []), {"role": "user", "content": text}]
    turns = int(state.get("turns", 0))
    if output is not None:
        messages.append({"role": "assistant", "content": output})
        turns += 1
    return {**state, "messages": messages, "turns": turns}


# HTTP -----------------------------------------------------------------------------------

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "HangarReferenceAgent/1.0"
    # Headers and body go out in two writes: with Nagle's algorithm the body waited
    # for the peer's delayed ACK of the headers (40 ms a request on a kept-alive
    # connection, e.g. the gateway's).
    disable_nagle_algorithm = True

    def log_message(self, format, *args):  # silence the default stderr access log
        pass

    # Helpers
    def _send_json(self, status: int, payload: dict, headers: dict | None = None) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self._status = status

    def _log(self, started: float, note: str = "") -> None:
        path = self.path.split("?", 1)[0]
        if path in ("/healthz", "/readyz") and not env_flag("AGENT_LOG_PROBES"):
            return
        took = (time.monotonic() - started) * 1000
        status = getattr(self, "_status", "-")
        log(f"{self.command} {path} {status} {took:.1f}ms{' ' + note if note else ''}")

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks, total = [], 0
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                total += size
                if total > MAX_BODY:
                    raise OverflowError
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise OverflowError
        return self.rfile.read(length) if length > 0 else b""

    def health(self) -> dict:
        payload = {"status": "ok", "inflight": STATE.inflight, "instance": INSTANCE,
                   "mode": MODE, "model": MODEL.name, "ready": is_ready()}
        if MODE == "stream":
            payload.update(STATE.stream)
        return payload

    # Verbs
    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        started = time.monotonic()
        STATE.add(requests=1)
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            self._send_json(200, self.health())
        elif path == "/readyz":
            if is_ready():
                self._send_json(200, {"status": "ready", "instance": INSTANCE})
            else:
                self._send_json(503, {"status": readiness_reason(), "instance": INSTANCE})
        elif path == "/metrics":
            self._send_json(200, {**STATE.snapshot(), **STATE.stream, "instance": INSTANCE})
        elif path == "/ws" and "websocket" in self.headers.get("Upgrade", "").lower():
            self._websocket()
        elif path == "/":
            self._send_json(200, {"agent": AGENT_NAME, "mode": MODE, "model": MODEL.name,
                                  "instance": INSTANCE, "endpoints": [
                                      "GET /healthz", "GET /readyz", "GET /metrics",
                                      "GET /ws", "POST /invoke", "POST /invoke/stream"]})
        elif path in ("/invoke", "/invoke/stream"):
            self._send_json(405, {"detail": "use POST"}, {"Allow": "POST"})
        else:
            self._send_json(404, {"detail": f"no such path: {path}"})
        self._log(started)

    # WebSocket (RFC 6455, just enough: no extensions; fragments joined)
    def _websocket(self) -> None:
        key = self.headers.get("Sec-WebSocket-Key", "")
        if not key:
            self._send_json(400, {"detail": "no Sec-WebSocket-Key"})
            return
        accept = base64.b64encode(hashlib.sha1(
            (key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        self._status, self.close_connection = 101, True
        try:
            note = self._ws_session()
        except (BrokenPipeError, ConnectionResetError):
            note = "ws: the peer went away"
        log(f"GET /ws {note}")

    def _ws_session(self) -> str:
        note, parts, kind = "", [], 1
        while True:
            frame = self._ws_read()
            if frame is None:
                note = "ws: the peer went away"
                break
            fin, opcode, data = frame
            if opcode == 8:  # close: log the peer's code, echo it
                code = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else None
                note = f"ws closed by the peer: {code} {data[2:].decode(errors='replace')}"
                self._ws_send(8, data[:2])
                break
            if opcode == 9:
                self._ws_send(10, data)
                continue
            if opcode in (1, 2):
                kind, parts = opcode, []
            elif opcode != 0:
                continue
            parts.append(data)
            if not fin:
                continue
            message = b"".join(parts)
            if kind == 2 or not self._ws_command(message):
                self._ws_send(kind, message)
            elif self._ws_closed:
                note = f"ws closed by the agent: {self._ws_closed}"
                break
        return note

    _ws_closed = 0

    def _ws_command(self, message: bytes) -> bool:
        """A JSON command (input to stream, or close); False: echo it."""
        with contextlib.suppress(ValueError, UnicodeDecodeError):
            command = json.loads(message)
            if isinstance(command, dict) and isinstance(command.get("close"), int):
                self._ws_closed = command["close"]
                reason = str(command.get("reason", "")).encode()[:120]
                self._ws_send(8, struct.pack("!H", command["close"]) + reason)
                while (frame := self._ws_read()) is not None and frame[1] != 8:
                    pass  # until the peer answers the close
                return True
            if isinstance(command, dict) and isinstance(command.get("input"), str):
                result = invoke(command["input"], emit=lambda index, token: self._ws_send(
                    1, json.dumps({"token": token, "index": index}).encode()))
                self._ws_send(1, json.dumps({"event": "done", **result}).encode())
                return True
        return False

    def _ws_read(self) -> tuple[bool, int, bytes] | None:
        head = self.rfile.read(2)
        if len(head) < 2:
            return None
        length = head[1] & 0x7F
        if length >= 126:
            size = 2 if length == 126 else 8
            length = int.from_bytes(self.rfile.read(size), "big")
        if length > MAX_BODY:
            return None
        mask = self.rfile.read(4) if head[1] & 0x80 else b""
        data = self.rfile.read(length)
        if mask:
            key = int.from_bytes((mask * (length // 4 + 1))[:length], "big")
            data = (int.from_bytes(data, "big") ^ key).to_bytes(length, "big")
        return bool(head[0] & 0x80), head[0] & 0x0F, data

    def _ws_send(self, opcode: int, data: bytes) -> None:
        size = len(data)
        head = bytes([0x80 | opcode]) + (bytes([size]) if size < 126 else
                                         bytes([126]) + struct.pack("!H", size) if size < 65536
                                         else bytes([127]) + struct.pack("!Q", size))
        self.wfile.write(head + data)
        self.wfile.flush()

    def do_POST(self):
        started = time.monotonic()
        STATE.add(requests=1)
        path = self.path.split("?", 1)[0]
        if path not in ("/invoke", "/invoke/stream"):
            self.close_connection = True
            self._send_json(404, {"detail": f"no such path: {path}"})
            self._log(started)
            return
        note = ""
        try:
            note = self._invoke(path)
        finally:
            self._log(started, note)
            STATE.served_one()

    def _invoke(self, path: str) -> str:
        try:
            raw = self._read_body()
        except OverflowError:
            STATE.add(errors=1)
            self.close_connection = True
            self._send_json(413, {"detail": f"body larger than {MAX_BODY} bytes"})
            return ""
        except ValueError as exc:  # a malformed Content-Length or chunk size
            STATE.add(errors=1)
            self.close_connection = True
            self._send_json(400, {"detail": f"bad request: {exc}"})
            return ""
        try:
            payload = json.loads(raw or b"null")
            text, thread_id = parse_payload(payload)
            thread = thread_of(payload)
        except (ValueError, UnicodeDecodeError) as exc:
            STATE.add(errors=1)
            self._send_json(400, {"detail": f"bad request: {exc}"})
            return ""
        if thread is not None:
            thread_id, text = thread["id"], thread_text(payload.get("input"))
        streaming = path == "/invoke/stream" or "text/event-stream" in self.headers.get(
            "Accept", "")
        carrier = {k.lower(): v for k, v in self.headers.items()}
        if not streaming:
            try:
                result = invoke(text, thread_id, carrier=carrier)
            except Exception as exc:  # the offline model does not fail; be safe anyway
                STATE.add(errors=1)
                self._send_json(500, {"detail": f"invocation failed: {exc}"})
                return ""
            if thread is not None:
                result["state"] = thread_turn(thread["state"], text, result["output"])
            self._send_json(200, result)
            usage = result["usage"]
            return f"in={usage['input_tokens']} out={usage['output_tokens']}"

        # HTTP/1.1: chunked, and the connection stays open for the caller's next
        # request (a gateway's keep-alive pool); HTTP/1.0: the end is the close.
        chunked = self.request_version == "HTTP/1.1"
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("X-Accel-Buffering", "no")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self._status = 200

        def send(event: str | None, data) -> None:
            if self._caller_gone():  # the caller hung up (an interrupted thread run)
                raise BrokenPipeError("the caller closed the connection")
            text = (f"event: {event}\n" if event else "") + f"data: {json.dumps(data)}\n\n"
            raw = text.encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(raw), raw) if chunked else raw)

        try:
            if thread is not None:  # the state so far: the user's message is in
                send("values", thread_turn(thread["state"], text, None))
            result = invoke(text, thread_id, carrier=carrier, emit=lambda index, token: send(
                None, {"token": token, "index": index}))
            if thread is not None:
                result["state"] = thread_turn(thread["state"], text, result["output"])
                send("values", result["state"])
            send("done", result)
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            STATE.add(errors=1)
            self.close_connection = True
            return "stream=1 client went away"
        except Exception as exc:
            STATE.add(errors=1)
            self.close_connection = True
            with contextlib.suppress(OSError):
                send("error", {"detail": f"invocation failed: {exc}"})
                if chunked:
                    self.wfile.write(b"0\r\n\r\n")
            return "stream=1 failed"
        usage = result["usage"]
        return f"stream=1 in={usage['input_tokens']} out={usage['output_tokens']}"


    def _caller_gone(self) -> bool:
        """The caller closed its end: readable with nothing to read (it sends nothing
        else while an answer is streamed to it), or reset."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # socketserver's default listen backlog is 5: a burst of new connections (a
    # gateway opening its pool, a thousand streams at once) overflowed it, and each
    # dropped SYN cost the caller a 1 s (then 3 s) retransmit.
    request_queue_size = 1024


def readiness_reason() -> str:
    if STATE.stopping:
        return "stopping"
    if env_flag("AGENT_FAIL_READINESS"):
        return "failing readiness on purpose (AGENT_FAIL_READINESS)"
    if not STATE.ready:
        return "starting"
    kind = STATE.stream.get("kind", "redis")
    if MODE == "stream" and STATE.stream.get(kind) != "connected":
        return f"{kind}: {STATE.stream.get(kind, 'not connected')}"
    return "ready"


def is_ready() -> bool:
    return readiness_reason() == "ready"


def start_http() -> Server:
    bind = env_str("AGENT_BIND", "127.0.0.1")
    port = env_int("PORT", 8080)
    listen_delay = env_float("AGENT_SLOW_LISTEN_S", 0)
    if listen_delay > 0:
        log(f"AGENT_SLOW_LISTEN_S={listen_delay}: waiting before listening")
        time.sleep(listen_delay)
    server = Server((bind, port), Handler)
    log(f"{MODE} mode, model {MODEL.name}, listening on http://{bind}:{port}")

    def become_ready():
        delay = env_float("AGENT_SLOW_START_S", 0)
        if delay > 0:
            log(f"AGENT_SLOW_START_S={delay}: not ready yet")
            time.sleep(delay)
        STATE.ready = True
        if env_flag("AGENT_FAIL_READINESS"):
            log("AGENT_FAIL_READINESS=1: /readyz will answer 503")
        else:
            log("ready")

    threading.Thread(target=become_ready, name="slow-start", daemon=True).start()
    return server


def drain() -> None:
    deadline = time.monotonic() + env_float("AGENT_DRAIN_S", 3)
    while STATE.inflight > 0 and time.monotonic() < deadline:
        time.sleep(0.05)


# Patterns ------------------------------------------------------------------------------

def run_realtime() -> int:
    server = start_http()

    def on_signal(signum, frame):
        if not STATE.stopping:
            STATE.stopping = True
            log(f"received {signal.Signals(signum).name}: shutting down")
            threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        drain()
        server.server_close()
        TRACING.shutdown()
        log("stopped")
    return 0


def read_batch_input() -> tuple[list[str], str | None, bool]:
    """(the texts to process, thread id, whether the input was a list of items).

    ``{"items": [...]}`` is a job of many items, each processed once; anything
    else (plain text, a JSON string, ``{"input": ..., "thread_id"?: ...}``) is one."""
    path = os.environ.get("AGENT_INPUT_FILE")
    if path:
        with open(path, encoding="utf-8") as fh:
            raw = fh.read()
    else:
        raw = os.environ.get("AGENT_INPUT", "")
    try:
        payload = json.loads(raw)
    except ValueError:
        return [raw], None, False
    if isinstance(payload, dict) and isinstance(payload.get("items"), list):
        thread_id = payload.get("thread_id")
        return ([item if isinstance(item, str) else json.dumps(item, sort_keys=True)
                 for item in payload["items"]],
                None if thread_id is None else str(thread_id), True)
    if isinstance(payload, dict) and "input" in payload:
        text, thread_id = parse_payload(payload)
        return [text], thread_id, False
    if isinstance(payload, str):
        return [payload], None, False
    return [raw], None, False


def batch_parent() -> dict | None:
    """The W3C trace context the control plane gives the job (``TRACEPARENT``,
    ``TRACESTATE``): the job's root span belongs to that trace, so its spans
    link to the job run that started it."""
    carrier = {key.lower(): os.environ[key] for key in ("TRACEPARENT", "TRACESTATE")
               if os.environ.get(key, "").strip()}
    return carrier if "traceparent" in carrier else None


def run_batch() -> int:
    try:
        texts, thread_id, many = read_batch_input()
    except OSError as exc:
        print(f"batch: cannot read AGENT_INPUT_FILE: {exc}", file=sys.stderr, flush=True)
        return exit_code(2)
    started = time.monotonic()
    attributes = {"gen_ai.agent.name": AGENT_NAME, "hangar.instance": INSTANCE,
                  "hangar.job.items": len(texts)}
    # One root span for the job (a child of TRACEPARENT's span when given), one
    # invoke_agent span per item under it; the root reports the items processed.
    with TRACING.span("batch_job", "INTERNAL", batch_parent(), attributes) as root:
        try:
            results = [invoke(text, thread_id, kind="INTERNAL") for text in texts]
        except Exception as exc:
            TRACING.error(root, exc)
            raise
    if many:
        result = {"outputs": [r["output"] for r in results], "model": MODEL.name,
                  "usage": {key: sum(r["usage"][key] for r in results)
                            for key in ("input_tokens", "output_tokens")},
                  "instance": INSTANCE}
        if thread_id is not None:
            result["thread_id"] = thread_id
    else:
        result = results[0]
    result["items"] = len(texts)
    result["duration_ms"] = round((time.monotonic() - started) * 1000, 3)
    line = json.dumps(result)
    print(line, flush=True)
    out_path = os.environ.get("AGENT_OUTPUT_FILE")
    if out_path:
        directory = os.path.dirname(os.path.abspath(out_path))
        os.makedirs(directory, exist_ok=True)
        tmp = f"{out_path}.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(line + "\n")
        os.replace(tmp, out_path)
    TRACING.shutdown(timeout_s=5.0)
    return exit_code(0)


class PoisonMessage(Exception):
    pass


class StreamConsumer:
    """One consumer of a Redis Streams consumer group, with dead-lettering."""

    def __init__(self, redis_module):
        self.redis = redis_module
        self.url = env_str("STREAM_URL") or env_str("STREAM_REDIS_URL",
                                                    "redis://127.0.0.1:6379/0")
        self.stream = env_str("STREAM_NAME", "agent-input")
        self.group = env_str("STREAM_GROUP", "agents")
        self.output = env_str("STREAM_OUTPUT", f"{self.stream}:output")
        self.deadletter = env_str("STREAM_DEADLETTER", f"{self.stream}:deadletter")
        self.max_deliveries = max(1, env_int("STREAM_MAX_DELIVERIES", 3))
        self.claim_idle_ms = max(1, env_int("STREAM_CLAIM_IDLE_MS", 1000))
        self.block_ms = max(1, env_int("STREAM_BLOCK_MS", 500))
        self.batch = max(1, env_int("STREAM_BATCH", 10))
        self.start_id = env_str("STREAM_START_ID", "0")
        self.consumer = INSTANCE
        self.client = None
        self.cursor = "0-0"
        self.autoclaim = True
        self.last_lag = 0.0
        STATE.stream = {"lag": None, "pending": None, "redis": "connecting", "kind": "redis",
                        "stream": self.stream, "group": self.group}

    def connect(self) -> None:
        self.client = self.redis.Redis.from_url(
            self.url, decode_responses=True, socket_connect_timeout=3,
            socket_timeout=self.block_ms / 1000 + 5, health_check_interval=30)
        try:
            self.client.xgroup_create(self.stream, self.group, id=self.start_id, mkstream=True)
            log(f"created group {self.group} on {self.stream}")
        except self.redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        if STATE.stream.get("redis") != "connected":
            log(f"consuming {self.stream} as {self.group}/{self.consumer}")
        STATE.stream["redis"] = "connected"

    def run(self) -> None:
        errors = self.redis.exceptions
        backoff = 0.5
        while not STATE.stopping:
            try:
                if self.client is None:
                    self.connect()
                self.reclaim()
                if STATE.stopping:
                    break
                self.read_new()
                self.refresh_lag()
                backoff = 0.5
            except (errors.ConnectionError, errors.TimeoutError, OSError) as exc:
                self._lost(f"unreachable: {exc}")
                self._sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            except errors.ResponseError as exc:
                if "NOGROUP" in str(exc):  # stream or group deleted under us: recreate
                    self._lost("group missing, recreating")
                else:
                    self._lost(f"error: {exc}")
                    self._sleep(backoff)
                    backoff = min(backoff * 2, 5.0)

    def _lost(self, why: str) -> None:
        if STATE.stream.get("redis") != why:
            log(f"redis {why}")
        STATE.stream["redis"] = why
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.close()
        self.client = None

    @staticmethod
    def _sleep(seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not STATE.stopping and time.monotonic() < deadline:
            time.sleep(0.05)

    @staticmethod
    def _entries(response) -> list:
        if not response:
            return []
        if isinstance(response, dict):  # RESP3
            return [entry for entries in response.values() for entry in
                    (entries[0] if entries and isinstance(entries[0], list) else entries)]
        return [entry for _, entries in response for entry in entries]

    def read_new(self) -> None:
        response = self.client.xreadgroup(self.group, self.consumer, {self.stream: ">"},
                                          count=self.batch, block=self.block_ms)
        for message_id, fields in self._entries(response):
            if STATE.stopping:
                return
            self.process(message_id, fields, deliveries=1)

    def reclaim(self) -> None:
        """Take over messages pending longer than STREAM_CLAIM_IDLE_MS (ours after a
        failure, or a dead consumer's) and retry or dead-letter them."""
        claimed: list = []
        if self.autoclaim:
            try:
                result = self.client.xautoclaim(
                    self.stream, self.group, self.consumer, self.claim_idle_ms,
                    start_id=self.cursor, count=self.batch)
                self.cursor = result[0] or "0-0"
                claimed = result[1]
            except self.redis.exceptions.ResponseError as exc:
                if "unknown command" not in str(exc).lower():
                    raise
                self.autoclaim = False  # Redis < 6.2: XPENDING + XCLAIM
        if not self.autoclaim:
            pending = self.client.xpending_range(self.stream, self.group, "-", "+", self.batch)
            ids = [p["message_id"] for p in pending
                   if p["time_since_delivered"] >= self.claim_idle_ms]
            if ids:
                claimed = self.client.xclaim(self.stream, self.group, self.consumer,
                                             self.claim_idle_ms, ids)
        for message_id, fields in claimed:
            if STATE.stopping:
                return
            if not fields:  # deleted from the stream while pending
                self.client.xack(self.stream, self.group, message_id)
                continue
            self.process(message_id, fields, deliveries=self.deliveries(message_id))

    def deliveries(self, message_id: str) -> int:
        info = self.client.xpending_range(self.stream, self.group, message_id, message_id, 1)
        return int(info[0]["times_delivered"]) if info else 1

    def refresh_lag(self) -> None:
        now = time.monotonic()
        if now - self.last_lag < 1.0:
            return
        self.last_lag = now
        for group in self.client.xinfo_groups(self.stream):
            if group.get("name") == self.group:
                pending = int(group.get("pending") or 0)
                undelivered = group.get("lag")
                STATE.stream["pending"] = pending
                STATE.stream["lag"] = pending + int(undelivered or 0)
                break

    def process(self, message_id: str, fields: dict, deliveries: int) -> None:
        started = time.monotonic()
        text = fields.get("input")
        try:
            if text is None:
                raise ValueError("message has no 'input' field")
            if text == os.environ.get("AGENT_POISON", "poison"):  # "" after the fix: none
                raise PoisonMessage("poison message")
            result = invoke(text, fields.get("thread_id"), kind="CONSUMER", carrier=fields,
                            extra={"messaging.system": "redis",
                                   "messaging.destination.name": self.stream,
                                   "messaging.message.id": message_id})
        except Exception as exc:
            STATE.add(errors=1)
            self.failed(message_id, fields, deliveries, exc)
            return
        pipe = self.client.pipeline(transaction=True)
        if self.output:
            pipe.xadd(self.output, {
                "input": text, "output": result["output"], "source_id": message_id,
                "instance": INSTANCE, "model": result["model"],
                "input_tokens": result["usage"]["input_tokens"],
                "output_tokens": result["usage"]["output_tokens"],
            })
        pipe.xack(self.stream, self.group, message_id)
        pipe.execute()
        took = (time.monotonic() - started) * 1000
        usage = result["usage"]
        log(f"XREADGROUP {self.stream} {message_id} ok {took:.1f}ms "
            f"in={usage['input_tokens']} out={usage['output_tokens']}")
        STATE.served_one()

    def failed(self, message_id: str, fields: dict, deliveries: int, exc: Exception) -> None:
        if deliveries < self.max_deliveries:
            log(f"XREADGROUP {self.stream} {message_id} failed "
                f"(delivery {deliveries}/{self.max_deliveries}): {exc}; left pending")
            return
        pipe = self.client.pipeline(transaction=True)
        pipe.xadd(self.deadletter, {
            "source_id": message_id, "source_stream": self.stream, "group": self.group,
            "input": fields.get("input", ""), "fields": json.dumps(fields),
            "error": str(exc) or type(exc).__name__, "deliveries": deliveries,
            "instance": INSTANCE,
        })
        pipe.xack(self.stream, self.group, message_id)
        pipe.execute()
        log(f"XREADGROUP {self.stream} {message_id} dead-lettered to {self.deadletter} "
            f"after {deliveries} deliveries: {exc}")


class NatsConsumer:
    """One member of a JetStream durable pull consumer, with dead-lettering.

    Fetches up to ``STREAM_BATCH`` messages at once; each is acknowledged after
    its output is published (a consumer killed mid-message leaves it
    unacknowledged: JetStream redelivers it after ``STREAM_ACK_WAIT_MS``, to
    whichever replica fetches next); a failure is redelivered at once (NAK) until
    its ``STREAM_MAX_DELIVERIES``-th delivery, which publishes it to the
    dead-letter subject with its error and delivery count and terminates it.
    The input is the message body (plain text, or JSON with "input")."""

    def __init__(self, nats_module):
        self.nats = nats_module
        self.url = env_str("STREAM_URL", "nats://127.0.0.1:4222")
        self.stream = env_str("STREAM_NAME", "AGENT_INPUT")
        self.durable = env_str("STREAM_GROUP", "agents")
        self.subjects = [x for x in env_str("STREAM_SUBJECTS").split(",") if x] \
            or [f"{self.stream.lower()}.in"]
        self.output = env_str("STREAM_OUTPUT", f"{self.stream}-output")
        self.deadletter = env_str("STREAM_DEADLETTER", f"{self.stream}-deadletter")
        self.max_deliveries = max(1, env_int("STREAM_MAX_DELIVERIES", 3))
        self.ack_wait_s = max(1, env_int("STREAM_ACK_WAIT_MS", 30000)) / 1000
        self.block_s = max(1, env_int("STREAM_BLOCK_MS", 500)) / 1000
        self.batch = max(1, env_int("STREAM_BATCH", 10))
        self.last_lag = 0.0
        STATE.stream = {"lag": None, "pending": None, "nats": "connecting", "kind": "nats",
                        "stream": self.stream, "group": self.durable}

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        backoff = 0.5
        while not STATE.stopping:
            nc = None
            try:
                nc = await asyncio.wait_for(self.nats.connect(
                    servers=self.url.split(","), allow_reconnect=False,
                    max_reconnect_attempts=0, connect_timeout=3,
                    error_cb=self._quiet), timeout=5)
                js = nc.jetstream(timeout=5)
                await self._ensure(js)
                sub = await js.pull_subscribe_bind(self.durable, self.stream)
                self._lost("connected", quiet=STATE.stream.get("nats") == "connected")
                log(f"consuming {self.stream} as {self.durable}")
                backoff = 0.5
                while not STATE.stopping and nc.is_connected:
                    await self._round(js, sub)
            except Exception as exc:  # noqa: BLE001  (any broker error: reconnect)
                self._lost(f"unreachable: {exc or type(exc).__name__}")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                if nc is not None:
                    with contextlib.suppress(Exception):
                        await nc.close()

    @staticmethod
    async def _quiet(exc) -> None:
        pass

    def _lost(self, why: str, quiet: bool = False) -> None:
        if STATE.stream.get("nats") != why and not quiet:
            log(f"nats {why}")
        STATE.stream["nats"] = why

    async def _ensure(self, js) -> None:
        from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig
        from nats.js.errors import NotFoundError
        for name, subjects in ((self.stream, self.subjects), (self.output, [self.output]),
                               (self.deadletter, [self.deadletter])):
            if not name:
                continue
            try:
                await js.stream_info(name)
            except NotFoundError:
                await js.add_stream(StreamConfig(name=name, subjects=subjects))
        try:
            await js.consumer_info(self.stream, self.durable)
        except NotFoundError:
            await js.add_consumer(self.stream, ConsumerConfig(
                durable_name=self.durable, ack_policy=AckPolicy.EXPLICIT,
                ack_wait=self.ack_wait_s, max_deliver=-1))

    async def _round(self, js, sub) -> None:
        try:
            msgs = await sub.fetch(self.batch, timeout=self.block_s)
        except (TimeoutError, self.nats.errors.TimeoutError):
            msgs = []
        for msg in msgs:
            if STATE.stopping:
                return  # unacknowledged: redelivered to another replica
            await self.process(js, msg)
        now = time.monotonic()
        if now - self.last_lag >= 1.0:
            self.last_lag = now
            info = await js.consumer_info(self.stream, self.durable)
            STATE.stream["pending"] = info.num_ack_pending
            STATE.stream["lag"] = info.num_pending + info.num_ack_pending

    async def process(self, js, msg) -> None:
        started = time.monotonic()
        meta = msg.metadata
        seq, deliveries = meta.sequence.stream, meta.num_delivered
        body = msg.data.decode("utf-8", "replace")
        try:
            try:
                payload = json.loads(body)
            except ValueError:
                payload = body
            text, thread_id = parse_payload(payload)
            if text == "poison":
                raise PoisonMessage("poison message")
            result = invoke(text, thread_id, kind="CONSUMER", carrier=dict(msg.headers or {}),
                            extra={"messaging.system": "nats",
                                   "messaging.destination.name": msg.subject,
                                   "messaging.message.id": str(seq)})
        except Exception as exc:  # noqa: BLE001  (the message failed, not the consumer)
            STATE.add(errors=1)
            await self.failed(js, msg, body, seq, deliveries, exc)
            return
        if self.output:
            await js.publish(self.output, json.dumps({
                "input": text, "output": result["output"], "source_seq": seq,
                "instance": INSTANCE, "model": result["model"],
                "input_tokens": result["usage"]["input_tokens"],
                "output_tokens": result["usage"]["output_tokens"]}).encode())
        await msg.ack_sync()
        took = (time.monotonic() - started) * 1000
        log(f"FETCH {self.stream} {seq} ok {took:.1f}ms delivery={deliveries}")
        STATE.served_one()

    async def failed(self, js, msg, body: str, seq: int, deliveries: int, exc) -> None:
        if deliveries < self.max_deliveries:
            log(f"FETCH {self.stream} {seq} failed (delivery {deliveries}/"
                f"{self.max_deliveries}): {exc}; redelivered")
            await msg.nak()
            return
        await js.publish(self.deadletter, msg.data, headers={
            "Hangar-Source-Stream": self.stream, "Hangar-Source-Seq": str(seq),
            "Hangar-Source-Subject": msg.subject, "Hangar-Group": self.durable,
            "Hangar-Error": (str(exc) or type(exc).__name__)[:1000],
            "Hangar-Deliveries": str(deliveries), "Hangar-Instance": INSTANCE})
        await msg.term()
        log(f"FETCH {self.stream} {seq} dead-lettered to {self.deadletter} "
            f"after {deliveries} deliveries: {exc}")


def run_stream() -> int:
    kind = env_str("STREAM_KIND", "redis").strip().lower()
    package = {"redis": "redis", "nats": "nats"}.get(kind)
    if package is None:
        print(f"unknown STREAM_KIND {kind!r}: use redis or nats", file=sys.stderr, flush=True)
        return 2
    try:
        module = __import__(package)
        if kind == "nats":
            import nats.errors  # noqa: F401
    except ImportError:
        print(f"stream mode needs the '{'nats-py' if kind == 'nats' else 'redis'}' package: "
              f"pip install {'nats-py' if kind == 'nats' else 'redis'}", file=sys.stderr,
              flush=True)
        return 2
    consumer = StreamConsumer(module) if kind == "redis" else NatsConsumer(module)
    server = start_http()
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                     name="http", daemon=True).start()

    def on_signal(signum, frame):
        if not STATE.stopping:
            STATE.stopping = True
            log(f"received {signal.Signals(signum).name}: shutting down")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        consumer.run()
    finally:
        drain()
        server.shutdown()
        server.server_close()
        TRACING.shutdown()
        log("stopped")
    return 0


MODE = env_str("AGENT_MODE", "realtime").strip().lower()
PATTERNS = {"realtime": run_realtime, "batch": run_batch, "stream": run_stream}


def main() -> int:
    if env_flag("AGENT_CRASH_AT_START"):
        code = exit_code(1)
        log(f"AGENT_CRASH_AT_START=1: exiting with code {code}")
        return code
    run = PATTERNS.get(MODE)
    if run is None:
        print(f"unknown AGENT_MODE {MODE!r}: use one of {', '.join(PATTERNS)}",
              file=sys.stderr, flush=True)
        return 2

    def stop_early(signum, frame):  # SIGTERM before the pattern installs its own handler
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop_early)
    TRACING.setup()
    return run()


if __name__ == "__main__":
    sys.exit(main())

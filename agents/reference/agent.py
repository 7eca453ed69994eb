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
batch
    Input from ``AGENT_INPUT_FILE`` or ``AGENT_INPUT`` (plain text, a JSON string, or
    a JSON object with "input" and optional "thread_id"); prints the result as one
    JSON line, writes it to ``AGENT_OUTPUT_FILE`` if set; exits ``AGENT_EXIT_CODE`` (0).
stream
    Redis Streams consumer group (needs the ``redis`` package): ``STREAM_REDIS_URL``,
    ``STREAM_NAME``, ``STREAM_GROUP``, ``STREAM_OUTPUT``, ``STREAM_DEADLETTER``,
    ``STREAM_MAX_DELIVERIES`` (3), ``STREAM_CLAIM_IDLE_MS`` (1000), ``STREAM_BLOCK_MS``
    (500), ``STREAM_BATCH`` (10), ``STREAM_START_ID`` (0). Also serves /healthz (with
    ``lag``) and /readyz (ready = connected to Redis) on ``PORT``.

Model: an offline deterministic function of the input, never a network call, reported
under the name ``AGENT_MODEL`` (default gpt-4o-mini, a name genai-prices prices, so demo
runs show real cost figures); tokens are whitespace-separated words.
``AGENT_TOKEN_DELAY_MS`` paces streaming, ``AGENT_LATENCY_MS`` adds latency to every
invocation.

Tracing: with ``OTEL_EXPORTER_OTLP_ENDPOINT`` set and opentelemetry-sdk plus
opentelemetry-exporter-otlp-proto-http importable, one ``invoke_agent`` span per
invocation with a child ``chat <model>`` span carrying GenAI attributes.

Fault knobs: ``AGENT_SLOW_START_S`` (listening but not ready this long),
``AGENT_SLOW_LISTEN_S`` (not even listening this long), ``AGENT_FAIL_READINESS=1``,
``AGENT_CRASH_AFTER=N`` (exit ``AGENT_EXIT_CODE``, default 1, after N invocations),
``AGENT_CRASH_AT_START=1``. ``AGENT_DRAIN_S`` (3) bounds the wait for in-flight work on
SIGTERM; ``AGENT_LOG_PROBES=1`` also logs /healthz and /readyz requests.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
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
                llm_attrs = {
                    "gen_ai.operation.name": "chat",
                    "gen_ai.system": GEN_AI_SYSTEM,
                    "gen_ai.request.model": MODEL.name,
                }
                with TRACING.span(f"chat {MODEL.name}", "CLIENT", None, llm_attrs) as llm:
                    output = MODEL.complete(text)
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


# HTTP -----------------------------------------------------------------------------------

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "HangarReferenceAgent/1.0"

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
        elif path == "/":
            self._send_json(200, {"agent": AGENT_NAME, "mode": MODE, "model": MODEL.name,
                                  "instance": INSTANCE, "endpoints": [
                                      "GET /healthz", "GET /readyz", "GET /metrics",
                                      "POST /invoke", "POST /invoke/stream"]})
        elif path in ("/invoke", "/invoke/stream"):
            self._send_json(405, {"detail": "use POST"}, {"Allow": "POST"})
        else:
            self._send_json(404, {"detail": f"no such path: {path}"})
        self._log(started)

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
            text, thread_id = parse_payload(json.loads(raw or b"null"))
        except (ValueError, UnicodeDecodeError) as exc:
            STATE.add(errors=1)
            self._send_json(400, {"detail": f"bad request: {exc}"})
            return ""
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
            self._send_json(200, result)
            usage = result["usage"]
            return f"in={usage['input_tokens']} out={usage['output_tokens']}"

        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("X-Accel-Buffering", "no")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        self._status = 200

        def emit(index: int, token: str) -> None:
            data = json.dumps({"token": token, "index": index})
            self.wfile.write(f"data: {data}\n\n".encode())
            self.wfile.flush()

        try:
            result = invoke(text, thread_id, emit=emit, carrier=carrier)
            self.wfile.write(f"event: done\ndata: {json.dumps(result)}\n\n".encode())
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            STATE.add(errors=1)
            return "stream=1 client went away"
        except Exception as exc:
            STATE.add(errors=1)
            with contextlib.suppress(OSError):
                payload = json.dumps({"detail": f"invocation failed: {exc}"})
                self.wfile.write(f"event: error\ndata: {payload}\n\n".encode())
            return "stream=1 failed"
        usage = result["usage"]
        return f"stream=1 in={usage['input_tokens']} out={usage['output_tokens']}"


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def readiness_reason() -> str:
    if STATE.stopping:
        return "stopping"
    if env_flag("AGENT_FAIL_READINESS"):
        return "failing readiness on purpose (AGENT_FAIL_READINESS)"
    if not STATE.ready:
        return "starting"
    if MODE == "stream" and STATE.stream.get("redis") != "connected":
        return f"redis: {STATE.stream.get('redis', 'not connected')}"
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


def read_batch_input() -> tuple[str, str | None]:
    path = os.environ.get("AGENT_INPUT_FILE")
    if path:
        with open(path, encoding="utf-8") as fh:
            raw = fh.read()
    else:
        raw = os.environ.get("AGENT_INPUT", "")
    try:
        payload = json.loads(raw)
    except ValueError:
        return raw, None
    if isinstance(payload, dict) and "input" in payload:
        return parse_payload(payload)
    if isinstance(payload, str):
        return payload, None
    return raw, None


def run_batch() -> int:
    try:
        text, thread_id = read_batch_input()
    except OSError as exc:
        print(f"batch: cannot read AGENT_INPUT_FILE: {exc}", file=sys.stderr, flush=True)
        return exit_code(2)
    started = time.monotonic()
    result = invoke(text, thread_id, kind="INTERNAL")
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
        self.url = env_str("STREAM_REDIS_URL", "redis://127.0.0.1:6379/0")
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
        STATE.stream = {"lag": None, "pending": None, "redis": "connecting",
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
            if text == "poison":
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


def run_stream() -> int:
    try:
        import redis
    except ImportError:
        print("stream mode needs the 'redis' package: pip install redis", file=sys.stderr,
              flush=True)
        return 2
    consumer = StreamConsumer(redis)
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

"""The loopback OTLP/HTTP receiver the bundle's program exports its spans to.

The agent starts its program with the standard OpenTelemetry variables
(``OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:<port>``,
``OTEL_EXPORTER_OTLP_HEADERS=authorization=Bearer <secret>``), so any OTLP
exporter works unchanged: ``POST /v1/traces`` takes protobuf or OTLP/JSON
(gzip or not), and answers 200 only once the spans are in the SQLite buffer.
The secret changes with every start of the agent; a process on the device
that does not have it gets 401."""
from __future__ import annotations

import gzip
import hmac
import json
import logging
import secrets
import sqlite3
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from . import otlp
from .buffer import Buffer
from .protowire import DecodeError

log = logging.getLogger("hangar_edge.receiver")
MAX_BODY = 8 * 1024 * 1024


class Receiver:
    def __init__(self, buffer: Buffer, now: Callable[[], float], *, port: int = 0,
                 extra_resource: Callable[[], bytes] = lambda: b""):
        self.buffer = buffer
        self.now = now
        self.extra_resource = extra_resource
        self.secret = secrets.token_urlsafe(24)
        self.accepted = 0
        handler = type("Handler", (_Handler,), {"receiver": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="otlp-receiver",
                                        daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def child_env(self) -> dict[str, str]:
        return {"OTEL_EXPORTER_OTLP_ENDPOINT": self.endpoint,
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{self.endpoint}/v1/traces",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_EXPORTER_OTLP_HEADERS": f"authorization=Bearer {self.secret}"}

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self.server.shutdown()
        self.server.server_close()

    def store(self, body: bytes, content_type: str) -> tuple[int, str]:
        """Decode and buffer one export; (rejected, message)."""
        if content_type == otlp.JSON:
            body = otlp.from_json(json.loads(body))
        result = otlp.split(body, extra_resource=self.extra_resource())
        stored = self.buffer.add(result.groups, at=self.now(), rejected=result.rejected)
        self.accepted += stored
        return result.rejected, result.reason


class _Handler(BaseHTTPRequestHandler):
    receiver: Receiver
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        log.debug(format, *args)

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str, content_type: str) -> None:
        if content_type == otlp.JSON:
            body = json.dumps({"code": status, "message": message}).encode()
        else:
            body = otlp.pw.string_field(2, message)  # google.rpc.Status.message
        self._answer(status, body, content_type)

    def do_POST(self):  # noqa: N802 - http.server's name
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        reply_type = otlp.JSON if content_type == otlp.JSON else otlp.PROTOBUF
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY:
            self.close_connection = True
            return self._error(413, f"the body must be at most {MAX_BODY} bytes", reply_type)
        body = self.rfile.read(length)
        if self.path.split("?")[0] != "/v1/traces":
            return self._error(404, "only /v1/traces is served here", reply_type)
        expected = f"Bearer {self.receiver.secret}"
        if not hmac.compare_digest((self.headers.get("Authorization") or "").encode(),
                                   expected.encode()):
            return self._error(401, "send the agent's OTEL_EXPORTER_OTLP_HEADERS", reply_type)
        if content_type not in (otlp.JSON, otlp.PROTOBUF):
            return self._error(415, "send application/x-protobuf or application/json",
                               reply_type)
        try:
            if (self.headers.get("Content-Encoding") or "").lower() == "gzip":
                body = gzip.decompress(body)
                if len(body) > MAX_BODY:
                    raise DecodeError("too large once decompressed")
            rejected, message = self.receiver.store(body, content_type)
        except sqlite3.Error as exc:
            log.error("the span buffer is unavailable: %s", exc)
            return self._error(503, "the agent's span buffer is unavailable", reply_type)
        except (DecodeError, ValueError, OSError, EOFError) as exc:
            return self._error(400, f"not an OTLP trace export: {exc}", reply_type)
        if reply_type == otlp.JSON:
            reply = {"partialSuccess": {"rejectedSpans": str(rejected),
                                        "errorMessage": message}} if rejected else {}
            return self._answer(200, json.dumps(reply).encode(), otlp.JSON)
        return self._answer(200, otlp.partial_success(rejected, message), otlp.PROTOBUF)

    def do_GET(self):  # noqa: N802
        self._error(405, "POST /v1/traces", otlp.PROTOBUF)

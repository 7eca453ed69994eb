"""The reference agent's batch mode and its trace: with ``TRACEPARENT`` set, the
job's root span is a child of the control plane's span (same trace id, a
remote parent) and reports the items it processed. Spans go to a stand-in
OTLP/HTTP endpoint on 127.0.0.1 with the real OpenTelemetry SDK."""
from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from .test_reference_agent import AGENT, clean_env

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
REMOTE = 0x300  # OTLP span flags: the parent is known to be remote


class _Collector(http.server.BaseHTTPRequestHandler):
    received: list[bytes] = []

    def do_POST(self):
        self.received.append(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def collector():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    _Collector.received = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def run_job(tmp_path, endpoint: str, **env) -> tuple[dict, list]:
    done = subprocess.run(
        [sys.executable, str(AGENT)], cwd=tmp_path, capture_output=True, text=True, timeout=30,
        env=clean_env(AGENT_MODE="batch", HANGAR_INSTANCE="job-7",
                      OTEL_EXPORTER_OTLP_ENDPOINT=endpoint, PATH=os.environ["PATH"], **env))
    assert done.returncode == 0, done.stderr
    spans = []
    for body in _Collector.received:
        request = ExportTraceServiceRequest.FromString(body)
        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                spans.extend(scope.spans)
    return json.loads(done.stdout.splitlines()[-1]), spans


def attributes(span) -> dict:
    return {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in span.attributes}


def test_a_job_with_traceparent_is_a_child_of_the_control_planes_span(tmp_path, collector):
    result, spans = run_job(tmp_path, collector, TRACEPARENT=f"00-{TRACE}-{PARENT}-01",
                            AGENT_INPUT=json.dumps({"items": ["first report", "second one",
                                                              {"id": 3}]}))
    assert result["items"] == 3 and len(result["outputs"]) == 3
    assert result["usage"]["input_tokens"] == 2 + 2 + 2  # '{"id": 3}' is two words
    assert {s.trace_id.hex() for s in spans} == {TRACE}
    (root,) = [s for s in spans if s.name == "batch_job"]
    assert root.parent_span_id.hex() == PARENT and root.flags & REMOTE == REMOTE
    assert attributes(root)["hangar.job.items"] == 3
    invocations = [s for s in spans if s.name == "invoke_agent"]
    assert len(invocations) == 3 and {s.parent_span_id for s in invocations} == {root.span_id}
    chats = [s for s in spans if s.name.startswith("chat ")]
    assert sum(attributes(s)["gen_ai.usage.input_tokens"] for s in chats) == 6


def test_without_traceparent_the_job_starts_its_own_trace(tmp_path, collector):
    result, spans = run_job(tmp_path, collector, AGENT_INPUT="summarise the report")
    assert result["items"] == 1 and result["usage"]["input_tokens"] == 3
    (root,) = [s for s in spans if s.name == "batch_job"]
    assert not root.parent_span_id and root.trace_id.hex() != TRACE
    assert attributes(root)["hangar.job.items"] == 1


def test_a_malformed_traceparent_is_ignored_not_fatal(tmp_path, collector):
    result, spans = run_job(tmp_path, collector, TRACEPARENT="not-a-trace-context",
                            AGENT_INPUT="hello")
    assert result["items"] == 1
    (root,) = [s for s in spans if s.name == "batch_job"]
    assert not root.parent_span_id

"""Build OTLP trace exports (protobuf and OTLP/JSON) for the telemetry tests."""
from __future__ import annotations

import gzip
import json
import os
import secrets
import time

from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from telemetry import ingest

PROTOBUF = "application/x-protobuf"
JSON = "application/json"


def give_token(deployment) -> str:
    """Issue ``deployment`` an ingest token in the production format."""
    deployment.ingest_token = f"{deployment.pk}.{secrets.token_urlsafe(24)}"
    deployment.save(update_fields=["ingest_token"])
    ingest.forget_sources()
    return deployment.ingest_token


def any_value(value) -> common_pb2.AnyValue:
    out = common_pb2.AnyValue()
    if isinstance(value, bool):
        out.bool_value = value
    elif isinstance(value, int):
        out.int_value = value
    elif isinstance(value, float):
        out.double_value = value
    elif isinstance(value, bytes):
        out.bytes_value = value
    elif isinstance(value, (list, tuple)):
        out.array_value.values.extend(any_value(v) for v in value)
    else:
        out.string_value = str(value)
    return out


def attributes(values: dict) -> list[common_pb2.KeyValue]:
    return [common_pb2.KeyValue(key=k, value=any_value(v)) for k, v in values.items()]


def new_trace_id() -> bytes:
    return os.urandom(16)


def new_span_id() -> bytes:
    return os.urandom(8)


def make_span(*, trace_id: bytes, span_id: bytes | None = None, parent: bytes = b"",
              name: str = "invoke_agent", start_ns: int | None = None,
              duration_ms: float = 10.0, attrs: dict | None = None, error: str | None = None,
              kind: int = 2, events: list | None = None) -> trace_pb2.Span:
    start = start_ns or time.time_ns()
    span = trace_pb2.Span(trace_id=trace_id, span_id=span_id or new_span_id(),
                          parent_span_id=parent, name=name, kind=kind,
                          start_time_unix_nano=start,
                          end_time_unix_nano=start + int(duration_ms * 1e6))
    span.attributes.extend(attributes(attrs or {}))
    if error is not None:
        span.status.code = 2
        span.status.message = error
    for event in events or []:
        ev = span.events.add()
        ev.name = event["name"]
        ev.time_unix_nano = start
        ev.attributes.extend(attributes(event.get("attributes", {})))
    return span


def llm_attrs(model: str = "gpt-4o-mini", input_tokens: int = 12, output_tokens: int = 30,
              system: str = "openai") -> dict:
    return {"gen_ai.operation.name": "chat", "gen_ai.system": system,
            "gen_ai.request.model": model, "gen_ai.response.model": model,
            "gen_ai.usage.input_tokens": input_tokens,
            "gen_ai.usage.output_tokens": output_tokens}


def agent_trace(*, model: str = "gpt-4o-mini", calls: tuple[tuple[int, int], ...] = ((12, 30),),
                error: str | None = None, start_ns: int | None = None,
                system: str = "openai") -> list[trace_pb2.Span]:
    """An ``invoke_agent`` root with one ``chat`` child per (input, output) call."""
    trace_id = new_trace_id()
    start = start_ns or time.time_ns()
    root_id = new_span_id()
    spans = [make_span(trace_id=trace_id, span_id=root_id, name="invoke_agent", start_ns=start,
                       duration_ms=50, error=error,
                       attrs={"gen_ai.operation.name": "invoke_agent",
                              "gen_ai.request.model": model})]
    for i, (tokens_in, tokens_out) in enumerate(calls):
        spans.append(make_span(trace_id=trace_id, parent=root_id, name=f"chat {model}",
                               start_ns=start + (i + 1) * 1_000_000, duration_ms=20, kind=3,
                               attrs=llm_attrs(model, tokens_in, tokens_out, system)))
    return spans


def export(spans, *, instance: str = "bot-1", service: str = "acme.support-bot"
           ) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.extend(
        attributes({"service.name": service, "service.instance.id": instance}))
    scope = resource_spans.scope_spans.add()
    scope.scope.name = "tests"
    scope.spans.extend(spans)
    return request


def to_json(request: ExportTraceServiceRequest) -> dict:
    """OTLP/JSON: camelCase, hex ids, int64 as strings (what MessageToDict gives)."""
    document = MessageToDict(request)
    for resource_spans in document.get("resourceSpans", []):
        for scope in resource_spans.get("scopeSpans", []):
            for span in scope.get("spans", []):
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:
                        import base64

                        span[key] = base64.b64decode(span[key]).hex()
    return document


def post(client, token: str | None, body: bytes | dict | list, *, content_type: str = PROTOBUF,
         compress: bool = False, headers: dict | None = None):
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    elif not isinstance(body, bytes):
        body = body.SerializeToString()
    extra = dict(headers or {})
    if token is not None:
        extra["Authorization"] = f"Bearer {token}"
    if compress:
        body = gzip.compress(body)
        extra["Content-Encoding"] = "gzip"
    return client.post("/v1/traces", data=body, content_type=content_type, headers=extra)


def status_message(response) -> str:
    """The reason in an OTLP error answer (a google.rpc.Status, protobuf or JSON)."""
    if response["Content-Type"].startswith(JSON):
        return json.loads(response.content)["message"]
    from google.rpc import status_pb2

    status = status_pb2.Status()
    status.ParseFromString(response.content)
    return status.message

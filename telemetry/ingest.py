"""OTLP/HTTP trace ingestion: authenticate, decode, validate, turn spans into rows.

``handle`` is the whole of ``POST /v1/traces`` below HTTP: it answers in the
request's encoding (protobuf or JSON, per the OTLP specification: an
``ExportTraceServiceResponse`` on success, a ``google.rpc.Status`` on error)
and only answers 2xx once ``storage`` has committed the spans.

Contract, also in the API docs:

* ``Authorization: Bearer <ingest token>``; the token is ``<deployment id>.<secret>``
  and is injected into every instance as ``OTEL_EXPORTER_OTLP_HEADERS``.
  Unknown deployment → 404, wrong or missing token → 401.
* ``Content-Type`` ``application/x-protobuf`` or ``application/json`` (OTLP/JSON:
  hex trace and span ids, int64 as strings or numbers) → else 415;
  ``Content-Encoding: gzip`` accepted → else 415.
* A body over ``HANGAR_INGEST_MAX_BYTES``, before or after decompression → 413.
* Anything malformed (not the message, bad ids, no start time, a span kind or
  status code beyond 32767) → 400 with the reason, and nothing of the request
  is stored: validation precedes the write.
* The same (trace id, span id) twice in a request keeps the first; a span
  already stored (an exporter retrying) is ignored, so retries never double
  count tokens or cost.
* Attribute values (and names, events, status messages) longer than
  ``HANGAR_INGEST_MAX_ATTRIBUTE_BYTES`` are truncated, never rejected: the
  span is flagged ``truncated`` and lists the cut attributes in
  ``hangar.truncated_attributes``.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import re
import secrets
import threading
import time
import weakref
import zlib
from dataclasses import dataclass, field
from decimal import Decimal
from typing import NamedTuple

import psycopg
from asgiref.sync import sync_to_async
from cachetools import TTLCache
from django.conf import settings
from django.db import DatabaseError, connection
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.message import DecodeError
from google.protobuf.unknown_fields import UnknownFieldSet
from google.rpc.status_pb2 import Status
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1 import common_pb2

from deployments.models import Deployment, Instance

from . import storage
from .cost import CACHE_READ_KEYS, CACHE_WRITE_KEYS, PRICER
from .models import FLAG_COST_UNKNOWN, FLAG_LLM, FLAG_ROOT, FLAG_TRUNCATED

log = logging.getLogger(__name__)

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
CONTENT_TYPES = {"application/x-protobuf": PROTOBUF, "application/protobuf": PROTOBUF,
                 "application/json": JSON}
MAX_NAME = 1024
MAX_ERROR = 2000
INT64_MAX = 2**63 - 1
MAX_ENUM = 2**15 - 1  # span kinds and status codes are stored as smallint
ZERO_TRACE = bytes(16)
ZERO_SPAN = bytes(8)
# Span.flags bits in OTLP: the parent is known to be remote (another process).
PARENT_IS_REMOTE = 0x300
# Operations whose usage, if any, aggregates their children's: not counted again.
AGENT_OPERATIONS = frozenset({"invoke_agent", "create_agent", "execute_tool"})


# Errors ------------------------------------------------------------------------------


class IngestError(Exception):
    status = 400
    grpc_code = 3  # INVALID_ARGUMENT

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class Malformed(IngestError):
    pass


class Unauthorized(IngestError):
    status, grpc_code = 401, 16  # UNAUTHENTICATED


class UnknownDeployment(IngestError):
    status, grpc_code = 404, 5  # NOT_FOUND


class TooLarge(IngestError):
    status, grpc_code = 413, 8  # RESOURCE_EXHAUSTED


class Unsupported(IngestError):
    status = 415


class Unavailable(IngestError):
    status, grpc_code = 503, 14  # UNAVAILABLE (the exporter retries)


@dataclass
class Reply:
    status: int
    body: bytes
    content_type: str
    headers: dict = field(default_factory=dict)


def encode_reply(fmt: str, error: IngestError | None = None) -> Reply:
    """The OTLP answer: an empty ExportTraceServiceResponse, or a Status."""
    if error is None:
        body = ExportTraceServiceResponse().SerializeToString() if fmt == PROTOBUF else b"{}"
        return Reply(200, body, fmt)
    status = Status(code=error.grpc_code, message=error.message)
    if fmt == PROTOBUF:
        body = status.SerializeToString()
    else:
        body = json.dumps(json_format.MessageToDict(status)).encode()
    headers = {"Retry-After": "1"} if error.status == 503 else {}
    if error.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="hangar-ingest"'
    return Reply(error.status, body, fmt, headers)


# Authentication ------------------------------------------------------------------------

SOURCE_TTL_S = 30.0
MISSING_TTL_S = 5.0  # how long an unknown deployment id is answered 404 from memory


@dataclass
class Source:
    """What an ingest token proves: the deployment (and its team and agent)."""

    deployment_id: int
    team_id: int
    agent_id: int
    version_id: int
    token_digest: bytes | None
    versions: dict[str, int | None] = field(default_factory=dict)

    def version_for(self, instance: str) -> int:
        """The version the named instance runs (falls back to the deployment's);
        instances are read with the source, so this never queries."""
        return self.versions.get(instance) or self.version_id


# Entries expire by themselves; reads reorder a TTLCache, so both go under the lock.
_sources: TTLCache[int, Source] = TTLCache(maxsize=100_000, ttl=SOURCE_TTL_S)
_missing: TTLCache[int, bool] = TTLCache(maxsize=100_000, ttl=MISSING_TTL_S)  # no such id
_legacy: dict[bytes, int] = {}
_legacy_loaded = [0.0]
_auth_lock = threading.Lock()


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _load(deployment_id: int) -> Source | None:
    with _auth_lock:
        cached = _sources.get(deployment_id)
    if cached is not None:
        return cached
    row = (Deployment.objects.filter(pk=deployment_id).select_related("agent")
           .only("pk", "version_id", "ingest_token", "agent__team_id", "agent_id").first())
    source = None
    if row is None:
        with _auth_lock:
            _missing[deployment_id] = True
    else:
        versions = dict(Instance.objects.filter(deployment_id=row.pk, version__isnull=False)
                        .values_list("name", "version_id")[:1000])
        source = Source(deployment_id=row.pk, team_id=row.agent.team_id, agent_id=row.agent_id,
                        version_id=row.version_id, versions=versions,
                        token_digest=_digest(row.ingest_token) if row.ingest_token else None)
        with _auth_lock:
            _sources[deployment_id] = source
    return source


def _legacy_lookup(token: str) -> int | None:
    """Tokens issued before the ``<id>.<secret>`` format: a digest map, rebuilt
    at most once a minute (never a scan per request)."""
    now = time.monotonic()
    if now - _legacy_loaded[0] > 60:
        mapping = {}
        for pk, value in Deployment.objects.exclude(ingest_token="").values_list(
                "pk", "ingest_token"):
            if not _TOKEN_FORMAT.match(value or ""):
                mapping[_digest(value)] = pk
        with _auth_lock:
            _legacy.clear()
            _legacy.update(mapping)
            _legacy_loaded[0] = now
    return _legacy.get(_digest(token))


_TOKEN_FORMAT = re.compile(r"^(\d{1,18})\.(.+)$")


def cached_source(authorization: str) -> Source | None:
    """``authenticate`` from the cache alone: the source, an error, or None when
    the database must be asked (which ``authenticate`` does)."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    token = token.strip()
    match = _TOKEN_FORMAT.match(token)
    if scheme.lower() != "bearer" or not match:
        return None
    deployment_id = int(match.group(1))
    with _auth_lock:
        missing = deployment_id in _missing
        source = _sources.get(deployment_id)
    if missing:
        raise UnknownDeployment(f"no deployment {deployment_id}")
    if source is None:
        return None
    if source.token_digest is None or not secrets.compare_digest(source.token_digest,
                                                                 _digest(token)):
        raise Unauthorized("wrong ingest token for this deployment")
    return source


def authenticate(authorization: str) -> Source:
    scheme, _, token = (authorization or "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("send the deployment's ingest token as 'Authorization: Bearer <token>'")
    match = _TOKEN_FORMAT.match(token)
    if match:
        source = _load(int(match.group(1)))
        if source is None:
            raise UnknownDeployment(f"no deployment {match.group(1)}")
    else:
        deployment_id = _legacy_lookup(token)
        if deployment_id is None:
            raise Unauthorized("unknown ingest token")
        source = _load(deployment_id)
        if source is None:
            raise UnknownDeployment("the token's deployment no longer exists")
    if source.token_digest is None or not secrets.compare_digest(source.token_digest,
                                                                 _digest(token)):
        raise Unauthorized("wrong ingest token for this deployment")
    return source


def forget_sources() -> None:
    """Drop cached deployments (tests; tokens otherwise refresh within 30 s)."""
    with _auth_lock:
        _sources.clear()
        _missing.clear()
        _legacy.clear()
        _legacy_loaded[0] = 0.0


# Decoding -----------------------------------------------------------------------------


def content_format(content_type: str) -> str:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    try:
        return CONTENT_TYPES[media]
    except KeyError:
        raise Unsupported(f"Content-Type {media or '(none)'!r} is not supported: use "
                          f"{PROTOBUF} or {JSON}") from None


def decompress(body: bytes, content_encoding: str, limit: int) -> bytes:
    encoding = (content_encoding or "").strip().lower()
    if encoding in ("", "identity"):
        if len(body) > limit:
            raise TooLarge(f"the body is larger than {limit} bytes")
        return body
    if encoding != "gzip":
        raise Unsupported(f"Content-Encoding {encoding!r} is not supported: use gzip or none")
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        raw = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise Malformed(f"the gzip body is corrupt: {exc}") from None
    if len(raw) > limit or inflater.unconsumed_tail:
        raise TooLarge(f"the body is larger than {limit} bytes once decompressed")
    if not inflater.eof:
        raise Malformed("the gzip body is truncated")
    if inflater.unused_data:
        raise Malformed("unexpected data after the gzip stream")
    return raw


def parse(raw: bytes, fmt: str) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    if fmt == PROTOBUF:
        try:
            request.ParseFromString(raw)
        except DecodeError as exc:
            raise Malformed(f"not an OTLP ExportTraceServiceRequest: {exc}") from None
        if len(UnknownFieldSet(request)):
            raise Malformed("not an OTLP ExportTraceServiceRequest: unknown fields")
        return request
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Malformed(f"not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise Malformed("the JSON body must be an object with 'resourceSpans'")
    _hex_ids_to_base64(document)
    try:
        json_format.ParseDict(document, request, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError) as exc:
        raise Malformed(f"not an OTLP/JSON ExportTraceServiceRequest: {exc}") from None
    return request


def _items(obj: dict, *names: str) -> list:
    for name in names:
        if name in obj:
            value = obj[name]
            if value is None:
                return []
            if not isinstance(value, list):
                raise Malformed(f"'{name}' must be a list")
            return value
    return []


def _hex_ids_to_base64(document: dict) -> None:
    """OTLP/JSON spells ids in hex; the protobuf JSON mapping expects base64."""
    for resource_spans in _items(document, "resourceSpans", "resource_spans"):
        if not isinstance(resource_spans, dict):
            raise Malformed("each of 'resourceSpans' must be an object")
        for scope_spans in _items(resource_spans, "scopeSpans", "scope_spans"):
            if not isinstance(scope_spans, dict):
                raise Malformed("each of 'scopeSpans' must be an object")
            for span in _items(scope_spans, "spans"):
                if not isinstance(span, dict):
                    raise Malformed("each span must be an object")
                _convert_ids(span, ("traceId", "trace_id", "spanId", "span_id", "parentSpanId",
                                    "parent_span_id"))
                for link in _items(span, "links"):
                    if isinstance(link, dict):
                        _convert_ids(link, ("traceId", "trace_id", "spanId", "span_id"))


def _convert_ids(obj: dict, keys: tuple[str, ...]) -> None:
    for key in keys:
        value = obj.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise Malformed(f"'{key}' must be a hex string")
        try:
            obj[key] = base64.b64encode(bytes.fromhex(value)).decode()
        except ValueError:
            raise Malformed(f"'{key}' is not hex: {value[:40]!r}") from None


# Spans to rows -------------------------------------------------------------------------


class SpanRow(NamedTuple):
    """One validated span: a row of the span table, its fields the table's
    columns in ``storage.COLUMNS`` order, so that COPY writes it as it is (ids
    as bytes or signed 64-bit ints, times in ns, None for NULL)."""

    trace_id: bytes
    span_id: int
    start_ns: int
    parent_span_id: int | None
    deployment_id: int
    duration_ns: int
    name: str
    kind: int
    status_code: int
    instance: str
    model: str | None
    input_tokens: int | None
    output_tokens: int | None
    cost_usd: Decimal | None
    flags: int
    error: str | None  # root spans with an error status
    data: bytes


@dataclass
class Batch:
    rows: list[SpanRow]
    duplicates: int = 0
    truncated: int = 0


def _clean(text: str, limit: int = MAX_NAME) -> str:
    if "\x00" in text:
        text = text.replace("\x00", "")
    return text if len(text) <= limit else text[:limit]


def extract(request: ExportTraceServiceRequest, *, deployment_id: int,
            max_attribute_bytes: int) -> Batch:
    """Validate every span and build the rows of ``deployment_id``; raise
    Malformed on the first bad span.

    This runs for every span received, so it reads each field once and skips
    what most spans lack (a status, span flags, GenAI usage).
    """
    rows: list[SpanRow] = []
    append = rows.append
    seen: set[bytes] = set()
    duplicates = truncated = 0
    number = 0
    for resource_spans in request.resource_spans:
        instance = ""
        for kv in resource_spans.resource.attributes:
            if kv.key == "service.instance.id":
                instance = _clean(str(_value(kv.value) or ""), 255)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                number += 1
                trace_id = span.trace_id
                span_id = span.span_id
                parent = span.parent_span_id
                start = span.start_time_unix_nano
                end = span.end_time_unix_nano
                if len(trace_id) != 16 or trace_id == ZERO_TRACE:
                    raise Malformed(f"span {number}: traceId must be 16 bytes and not all zero")
                if len(span_id) != 8 or span_id == ZERO_SPAN:
                    raise Malformed(f"span {number}: spanId must be 8 bytes and not all zero")
                if parent and len(parent) != 8:
                    raise Malformed(f"span {number}: parentSpanId must be 8 bytes or empty")
                if not start:
                    raise Malformed(f"span {number}: startTimeUnixNano is missing")
                if start > INT64_MAX or end > INT64_MAX:
                    raise Malformed(f"span {number}: a timestamp is out of range")
                key = trace_id + span_id
                if key in seen:
                    duplicates += 1
                    continue
                seen.add(key)
                name = span.name
                data = span.SerializeToString()
                flags = 0
                if len(data) > max_attribute_bytes or len(name) > MAX_NAME:
                    if enforce_limits(span, max_attribute_bytes):
                        flags = FLAG_TRUNCATED
                        truncated += 1
                        data = span.SerializeToString()
                        name = span.name
                if "\x00" in name:
                    name = name.replace("\x00", "")
                if parent and parent != ZERO_SPAN:
                    parent_id = int.from_bytes(parent, "big", signed=True)
                    # Span flags say whether the parent is remote.
                    if span.flags & PARENT_IS_REMOTE == PARENT_IS_REMOTE:
                        flags |= FLAG_ROOT
                else:
                    parent_id = None
                    flags |= FLAG_ROOT
                status = span.status.code if span.HasField("status") else 0
                kind = span.kind
                # Enums are open: any int32 parses. Their columns are smallint
                # (COPY's binary int2 would silently keep the low 16 bits).
                if not 0 <= kind <= MAX_ENUM or not 0 <= status <= MAX_ENUM:
                    raise Malformed(f"span {number}: kind {kind} or status code {status} "
                                    f"is out of range")
                model = input_tokens = output_tokens = cost = None
                if b"gen_ai.usage." in data:
                    model, input_tokens, output_tokens, cost, llm = _genai(data, start)
                    if llm:
                        flags |= FLAG_LLM if cost is not None else FLAG_LLM | FLAG_COST_UNKNOWN
                append(SpanRow(
                    trace_id, int.from_bytes(span_id, "big", signed=True), start, parent_id,
                    deployment_id, end - start if end > start else 0, name, kind, status,
                    instance, model, input_tokens, output_tokens, cost, flags,
                    _error_of(span) if status == 2 and flags & FLAG_ROOT else None, data))
    return Batch(rows, duplicates, truncated)


def _value(any_value):
    which = any_value.WhichOneof("value")
    return getattr(any_value, which) if which else None


def _count(value) -> int:
    if type(value) is int:
        return value if 0 <= value <= 2**53 else (0 if value < 0 else 2**53)
    if isinstance(value, bool) or value is None:
        return 0
    if isinstance(value, str):
        try:
            value = int(float(value))
        except ValueError:
            return 0
    try:
        return max(0, min(int(value), 2**53))
    except (TypeError, ValueError, OverflowError):
        return 0


# The GenAI attributes read, by slot; a slot fed by several keys (old and new
# names of the same count) takes the first key present, in this order.
_OPERATION, _REQUEST_MODEL, _RESPONSE_MODEL, _PROVIDER, _SYSTEM, _INPUT, _OUTPUT = range(7)
_CACHE_READ, _CACHE_WRITE = 7, 8
GENAI_KEYS = (("gen_ai.operation.name", _OPERATION), ("gen_ai.request.model", _REQUEST_MODEL),
              ("gen_ai.response.model", _RESPONSE_MODEL), ("gen_ai.provider.name", _PROVIDER),
              ("gen_ai.system", _SYSTEM), ("gen_ai.usage.input_tokens", _INPUT),
              ("gen_ai.usage.output_tokens", _OUTPUT),
              *((key, _CACHE_READ) for key in CACHE_READ_KEYS),
              *((key, _CACHE_WRITE) for key in CACHE_WRITE_KEYS))
_SCALARS = frozenset({"string_value", "int_value", "double_value", "bool_value"})


def _span_attributes_class():
    """A message type that reads only a span's attributes, keyed by name.

    It declares Span's attributes field (9) as ``map<string, AnyValue>``: on the
    wire a map is exactly a repeated message of (key = 1, value = 2), which is
    what OTLP's ``repeated KeyValue`` is, so a span's encoding parses as this
    type too (the other fields are kept as unknown). Looking a few keys up in
    the map is done by protobuf in C; walking every KeyValue in Python costs
    ~0.4 µs per attribute, for every attribute of every LLM span.
    """
    file = descriptor_pb2.FileDescriptorProto(
        name="hangar/telemetry/span_attributes.proto", package="hangar.telemetry",
        syntax="proto3", dependency=[common_pb2.DESCRIPTOR.name])
    message = file.message_type.add(name="SpanAttributes")
    entry = message.nested_type.add(name="AttributesEntry")
    entry.options.map_entry = True
    optional = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
    entry.field.add(name="key", number=1, label=optional,
                    type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING)
    entry.field.add(name="value", number=2, label=optional,
                    type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
                    type_name=".opentelemetry.proto.common.v1.AnyValue")
    message.field.add(name="attributes", number=9,
                      label=descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED,
                      type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
                      type_name=".hangar.telemetry.SpanAttributes.AttributesEntry")
    pool = descriptor_pool.Default()
    pool.Add(file)  # adding the same file again (a module reload) is allowed
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("hangar.telemetry.SpanAttributes"))


_SpanAttributes = _span_attributes_class()


def genai_values(data: bytes) -> list:
    """The GenAI attributes of a span (by slot, None when absent), from its
    protobuf encoding. Only the span's own attributes count (not its events' or
    links'); values that are not a string, int, double or bool are ignored; a
    key repeated in one span (which OTLP forbids) takes its last value, as
    protobuf does for map keys."""
    attributes = _SpanAttributes.FromString(data).attributes
    values = [None] * 9
    for key, slot in GENAI_KEYS:
        if key in attributes and values[slot] is None:
            value = attributes[key]
            which = value.WhichOneof("value")
            if which in _SCALARS:
                values[slot] = getattr(value, which)
    return values


def _genai(data: bytes, start_ns: int):
    """(model, input tokens, output tokens, cost, is an LLM call) of a span."""
    values = genai_values(data)
    if values[_INPUT] is None and values[_OUTPUT] is None:
        return None, None, None, None, False
    model = values[_RESPONSE_MODEL] or values[_REQUEST_MODEL]
    model = _clean(model, 255) if isinstance(model, str) and model else None
    input_tokens = _count(values[_INPUT])
    output_tokens = _count(values[_OUTPUT])
    if values[_OPERATION] in AGENT_OPERATIONS:
        return model, input_tokens, output_tokens, None, False
    provider = values[_PROVIDER] or values[_SYSTEM]
    cost = PRICER.price(model, provider if isinstance(provider, str) else None, input_tokens,
                        output_tokens, start_ns, cache_read=_count(values[_CACHE_READ]),
                        cache_write=_count(values[_CACHE_WRITE]))
    return model, input_tokens, output_tokens, cost, True


def _error_of(span) -> str:
    if span.status.message:
        return _clean(span.status.message, MAX_ERROR)
    for event in span.events:
        if event.name == "exception":
            found = {kv.key: _value(kv.value) for kv in event.attributes
                     if kv.key in ("exception.type", "exception.message")}
            text = ": ".join(str(found[k]) for k in ("exception.type", "exception.message")
                             if found.get(k))
            if text:
                return _clean(text, MAX_ERROR)
    return "error"


def enforce_limits(span, cap: int) -> bool:
    """Cut every over-long value of ``span`` in place; True if anything was cut."""
    cut: list[str] = []
    if len(span.name) > MAX_NAME:
        span.name = span.name[:MAX_NAME]
        cut.append("(name)")
    _limit_attributes(span.attributes, cap, cut, "")
    for event in span.events:
        if len(event.name) > MAX_NAME:
            event.name = event.name[:MAX_NAME]
            cut.append("(event name)")
        _limit_attributes(event.attributes, cap, cut, f"event {event.name}: ")
    for link in span.links:
        _limit_attributes(link.attributes, cap, cut, "link: ")
    if len(span.status.message.encode()) > cap:
        span.status.message = _cut(span.status.message, cap)
        cut.append("(status message)")
    if not cut:
        return False
    marker = span.attributes.add()
    marker.key = "hangar.truncated_attributes"
    for name in cut[:64]:
        marker.value.array_value.values.add().string_value = name[:200]
    return True


def _cut(text: str, cap: int) -> str:
    encoded = text.encode()
    kept = encoded[:cap].decode(errors="ignore")
    return f"{kept}…[truncated {len(encoded) - len(kept.encode())} bytes]"


def _limit_attributes(kvs, cap: int, cut: list[str], prefix: str) -> None:
    for kv in kvs:
        if _limit_value(kv.value, cap):
            cut.append(prefix + kv.key)


def _limit_value(value, cap: int) -> bool:
    which = value.WhichOneof("value")
    if which == "string_value":
        if len(value.string_value) * 4 > cap and len(value.string_value.encode()) > cap:
            value.string_value = _cut(value.string_value, cap)
            return True
    elif which == "bytes_value":
        if len(value.bytes_value) > cap:
            value.bytes_value = value.bytes_value[:cap]
            return True
    elif which == "array_value":
        return any([_limit_value(item, cap) for item in value.array_value.values])
    elif which == "kvlist_value":
        return any([_limit_value(kv.value, cap) for kv in value.kvlist_value.values])
    return False


# The whole request -----------------------------------------------------------------------


def prepare(body: bytes, fmt: str, content_encoding: str, source: Source) -> Batch:
    raw = decompress(body, content_encoding, settings.HANGAR_INGEST_MAX_BYTES)
    request = parse(raw, fmt)
    del raw
    return extract(request, deployment_id=source.deployment_id,
                   max_attribute_bytes=settings.HANGAR_INGEST_MAX_ATTRIBUTE_BYTES)


def _unavailable(exc: Exception) -> Unavailable:
    log.warning("span storage unavailable: %s", exc)
    return Unavailable("span storage is unavailable; retry later")


def handle(body: bytes, *, content_type: str, content_encoding: str,
           authorization: str) -> Reply:
    """Decode, validate and store one OTLP/HTTP trace export; answer in kind.

    Synchronous, on Django's database connection: the Django view (WSGI, tests,
    the standalone SQLite shape) uses this; ``handle_async`` is its twin for the
    ASGI fast path on PostgreSQL.
    """
    try:
        fmt = content_format(content_type)
    except IngestError as exc:
        return encode_reply(JSON, exc)
    try:
        source = authenticate(authorization)
        batch = prepare(body, fmt, content_encoding, source)
        try:
            result = storage.write_spans(source, batch.rows)
        except (DatabaseError, psycopg.Error) as exc:
            raise _unavailable(exc) from None
        storage.announce(source, result)
    except IngestError as exc:
        return encode_reply(fmt, exc)
    return encode_reply(fmt)


async def handle_async(body: bytes, *, content_type: str, content_encoding: str,
                       authorization: str) -> Reply:
    """``handle`` on the event loop: decoding runs inline (it is CPU-bound and
    short), the write goes through ``storage.write_spans_async``."""
    try:
        fmt = content_format(content_type)
    except IngestError as exc:
        return encode_reply(JSON, exc)
    try:
        source = cached_source(authorization) or await _authenticate_once(authorization)
        batch = prepare(body, fmt, content_encoding, source)
        del body
        try:
            result = await storage.write_spans_async(source, batch.rows)
        except (DatabaseError, psycopg.Error, OSError) as exc:
            raise _unavailable(exc) from None
        storage.announce(source, result)
    except IngestError as exc:
        return encode_reply(fmt, exc)
    return encode_reply(fmt)


_authenticating: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


async def _authenticate_once(authorization: str) -> Source:
    """``authenticate`` in a worker thread, once for all the exports that arrive
    with the same token while it runs: after a start, or when the cached source
    expires, every export in flight would otherwise query the database."""
    loop = asyncio.get_running_loop()
    pending = _authenticating.setdefault(loop, {})
    task = pending.get(authorization)
    if task is None:
        task = pending[authorization] = loop.create_task(
            sync_to_async(_authenticate_and_close, thread_sensitive=False)(authorization))
        task.add_done_callback(lambda _: pending.pop(authorization, None))
    try:
        # Shielded: an export whose client goes away does not cancel the others'.
        return await asyncio.shield(task)
    except (DatabaseError, psycopg.Error, OSError) as exc:
        raise _unavailable(exc) from None


def _authenticate_and_close(authorization: str) -> Source:
    """``authenticate`` from a worker thread that keeps no connection open."""
    try:
        return authenticate(authorization)
    finally:
        connection.close()

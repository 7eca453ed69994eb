"""From the HTTP body to an ``ExportTraceServiceRequest``: the content type,
gzip within the size limit, and protobuf or OTLP/JSON (hex ids) parsing."""
from __future__ import annotations

import base64
import json
import zlib

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from google.protobuf.unknown_fields import UnknownFieldSet
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from .replies import CONTENT_TYPES, JSON, PROTOBUF, Malformed, TooLarge, Unsupported


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


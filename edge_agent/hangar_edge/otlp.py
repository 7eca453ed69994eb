"""OTLP traces on the wire: an export request split into single spans (with
the resource and scope they came under) for the buffer, the same spans joined
back into an export for the upload, OTLP/JSON turned into protobuf, and the
spans the agent writes itself (run records).

A buffered span is its own protobuf bytes, untouched: what the program sent
is what Hangar receives, byte for byte, so a span keeps its ids and a second
upload of it is recognisably the same span."""
from __future__ import annotations

import base64
import os
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

from . import protowire as pw
from .protowire import DecodeError

PROTOBUF = "application/x-protobuf"
JSON = "application/json"


@dataclass
class Group:
    """Spans that share a resource and a scope. ``resource`` and ``scope`` are
    the ResourceSpans and ScopeSpans messages without their spans."""

    resource: bytes
    scope: bytes
    spans: list[bytes] = field(default_factory=list)


@dataclass
class Split:
    groups: list[Group]
    rejected: int = 0
    reason: str = ""


def _span_ids_valid(span: bytes) -> bool:
    trace_id = span_id = b""
    for number, _wire, value in pw.fields(span):
        if number == 1:
            trace_id = value
        elif number == 2:
            span_id = value
    return (len(trace_id) == 16 and len(span_id) == 8 and any(trace_id) and any(span_id))


def split(body: bytes, *, extra_resource: bytes = b"") -> Split:
    """An ExportTraceServiceRequest → its spans by resource and scope. A span
    without a valid 16-byte trace id and 8-byte span id is rejected (counted),
    as the OTLP spec's partial success allows; malformed bytes raise
    ``DecodeError``. ``extra_resource`` (encoded KeyValue fields) is added to
    every resource."""
    groups, rejected = [], 0
    for number, wire, resource_spans in pw.fields(body):
        if number != 1 or wire != pw.LENGTH:
            continue
        header, scopes, resource_seen = bytearray(), [], False
        for rnum, rwire, value in pw.fields(resource_spans):
            if rnum == 2 and rwire == pw.LENGTH:
                scopes.append(value)
            elif rnum == 1 and rwire == pw.LENGTH:
                list(pw.fields(value))  # validate
                header += pw.length_field(1, value + extra_resource)
                resource_seen = True
            else:
                header += _reencode(rnum, rwire, value)
        if not resource_seen and extra_resource:
            header += pw.length_field(1, extra_resource)
        for scope_spans in scopes:
            group = Group(resource=bytes(header), scope=b"")
            scope_header = bytearray()
            for snum, swire, value in pw.fields(scope_spans):
                if snum == 2 and swire == pw.LENGTH:
                    if _span_ids_valid(value):
                        group.spans.append(value)
                    else:
                        rejected += 1
                else:
                    scope_header += _reencode(snum, swire, value)
            group.scope = bytes(scope_header)
            if group.spans:
                groups.append(group)
    reason = f"{rejected} spans without a valid trace_id/span_id" if rejected else ""
    return Split(groups=groups, rejected=rejected, reason=reason)


def _reencode(number: int, wire: int, value) -> bytes:
    if wire == pw.LENGTH:
        return pw.length_field(number, value)
    if wire == pw.VARINT:
        return pw.key(number, wire) + pw.varint(value)
    if wire == pw.FIXED64:
        return pw.key(number, wire) + struct.pack("<Q", value)
    return pw.key(number, wire) + struct.pack("<I", value)


def join(groups: Iterable[Group]) -> bytes:
    """Groups → one ExportTraceServiceRequest (consecutive groups with the
    same resource share a ResourceSpans)."""
    out = bytearray()
    current_resource, scopes = None, bytearray()
    for group in groups:
        if current_resource is not None and group.resource != current_resource:
            out += pw.length_field(1, current_resource + bytes(scopes))
            scopes = bytearray()
        current_resource = group.resource
        scopes += pw.length_field(2, group.scope + b"".join(
            pw.length_field(2, span) for span in group.spans))
    if current_resource is not None:
        out += pw.length_field(1, current_resource + bytes(scopes))
    return bytes(out)


def parse_response(body: bytes) -> tuple[int, str]:
    """ExportTraceServiceResponse → (rejected spans, error message)."""
    rejected, message = 0, ""
    try:
        for number, wire, value in pw.fields(body):
            if number == 1 and wire == pw.LENGTH:
                for pnum, pwire, pvalue in pw.fields(value):
                    if pnum == 1 and pwire == pw.VARINT:
                        rejected = pvalue
                    elif pnum == 2 and pwire == pw.LENGTH:
                        message = pvalue.decode(errors="replace")
    except DecodeError:
        return 0, ""
    return rejected, message


def partial_success(rejected: int, message: str) -> bytes:
    """The ExportTraceServiceResponse the local receiver answers with."""
    if not rejected:
        return b""
    return pw.length_field(1, pw.varint_field(1, rejected) + pw.string_field(2, message))


# Values -------------------------------------------------------------------------------------


def any_value(value) -> bytes:
    if isinstance(value, bool):
        return pw.key(2, pw.VARINT) + pw.varint(int(value))
    if isinstance(value, int):
        return pw.key(3, pw.VARINT) + pw.varint(value)
    if isinstance(value, float):
        return pw.double_field(4, value)
    if isinstance(value, bytes):
        return pw.length_field(7, value)
    if isinstance(value, (list, tuple)):
        return pw.length_field(5, b"".join(pw.length_field(1, any_value(v)) for v in value))
    if isinstance(value, dict):
        return pw.length_field(6, b"".join(pw.length_field(1, key_value(k, v))
                                           for k, v in value.items()))
    return pw.length_field(1, str(value).encode())


def key_value(key: str, value) -> bytes:
    return pw.string_field(1, key) + pw.length_field(2, any_value(value))


def attributes(field_number: int, values: dict) -> bytes:
    return b"".join(pw.length_field(field_number, key_value(k, v)) for k, v in values.items()
                    if v is not None)


def new_ids() -> tuple[bytes, bytes]:
    return os.urandom(16), os.urandom(8)


def span(*, name: str, start_ns: int, end_ns: int, attrs: dict | None = None,
         trace_id: bytes | None = None, span_id: bytes | None = None, parent: bytes = b"",
         kind: int = 1, error: str | None = None) -> bytes:
    """One Span message (the agent's own run records)."""
    if trace_id is None or span_id is None:
        trace_id, span_id = new_ids()
    status = b""
    if error is not None:
        status = pw.length_field(15, pw.string_field(2, error) + pw.varint_field(3, 2))
    return (pw.length_field(1, trace_id) + pw.length_field(2, span_id)
            + (pw.length_field(4, parent) if parent else b"") + pw.string_field(5, name)
            + pw.varint_field(6, kind) + pw.fixed64_field(7, start_ns)
            + pw.fixed64_field(8, end_ns) + attributes(9, attrs or {}) + status)


def resource(attrs: dict) -> bytes:
    """A ResourceSpans header whose resource carries ``attrs``."""
    return pw.length_field(1, attributes(1, attrs))


def scope(name: str, version: str = "") -> bytes:
    """A ScopeSpans header naming the instrumentation scope."""
    return pw.length_field(1, pw.string_field(1, name) + pw.string_field(2, version))


# OTLP/JSON → protobuf -----------------------------------------------------------------------

_HEX = re.compile(r"^[0-9a-fA-F]*$")


def _id(text: str | None, size: int) -> bytes:
    if not text:
        return b""
    if len(text) == size * 2 and _HEX.match(text):
        return bytes.fromhex(text)
    try:  # some exporters send base64, as protobuf's JSON mapping would
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        raise DecodeError(f"bad id {text!r}") from None
    return raw


def _int(value) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        raise DecodeError(f"bad integer {value!r}") from None


_ENUMS = {f"SPAN_KIND_{name}": i for i, name in enumerate(
    ["UNSPECIFIED", "INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER"])}
_ENUMS.update({"STATUS_CODE_UNSET": 0, "STATUS_CODE_OK": 1, "STATUS_CODE_ERROR": 2})


def _enum(value) -> int:
    """OTLP/JSON enums are integers; protobuf's JSON mapping writes names."""
    if isinstance(value, str) and value in _ENUMS:
        return _ENUMS[value]
    return _int(value)


def _json_any(value: dict) -> bytes:
    if not isinstance(value, dict):
        raise DecodeError("an AnyValue must be an object")
    if "stringValue" in value:
        return pw.length_field(1, str(value["stringValue"]).encode())
    if "boolValue" in value:
        return pw.key(2, pw.VARINT) + pw.varint(int(bool(value["boolValue"])))
    if "intValue" in value:
        return pw.key(3, pw.VARINT) + pw.varint(_int(value["intValue"]))
    if "doubleValue" in value:
        try:
            return pw.double_field(4, float(value["doubleValue"]))
        except (TypeError, ValueError):
            raise DecodeError("bad doubleValue") from None
    if "arrayValue" in value:
        items = (value["arrayValue"] or {}).get("values") or []
        return pw.length_field(5, b"".join(pw.length_field(1, _json_any(v)) for v in items))
    if "kvlistValue" in value:
        items = (value["kvlistValue"] or {}).get("values") or []
        return pw.length_field(6, _json_attributes(1, items))
    if "bytesValue" in value:
        return pw.length_field(7, base64.b64decode(value["bytesValue"] or ""))
    return b""


def _json_attributes(field_number: int, items) -> bytes:
    if not isinstance(items, list):
        raise DecodeError("attributes must be a list")
    out = bytearray()
    for item in items:
        if not isinstance(item, dict):
            raise DecodeError("an attribute must be an object")
        kv = pw.string_field(1, str(item.get("key", "")))
        if item.get("value") is not None:
            kv += pw.length_field(2, _json_any(item["value"]))
        out += pw.length_field(field_number, kv)
    return bytes(out)


def _json_span(obj: dict) -> bytes:
    out = bytearray()
    out += pw.length_field(1, _id(obj.get("traceId"), 16))
    out += pw.length_field(2, _id(obj.get("spanId"), 8))
    out += pw.string_field(3, obj.get("traceState") or "")
    parent = _id(obj.get("parentSpanId"), 8)
    if parent:
        out += pw.length_field(4, parent)
    out += pw.fixed32_field(16, _int(obj.get("flags")))
    out += pw.string_field(5, obj.get("name") or "")
    out += pw.varint_field(6, _enum(obj.get("kind")))
    out += pw.fixed64_field(7, _int(obj.get("startTimeUnixNano")))
    out += pw.fixed64_field(8, _int(obj.get("endTimeUnixNano")))
    out += _json_attributes(9, obj.get("attributes") or [])
    out += pw.varint_field(10, _int(obj.get("droppedAttributesCount")))
    for event in obj.get("events") or []:
        out += pw.length_field(11, pw.fixed64_field(1, _int(event.get("timeUnixNano")))
                               + pw.string_field(2, event.get("name") or "")
                               + _json_attributes(3, event.get("attributes") or []))
    out += pw.varint_field(12, _int(obj.get("droppedEventsCount")))
    for link in obj.get("links") or []:
        out += pw.length_field(13, pw.length_field(1, _id(link.get("traceId"), 16))
                               + pw.length_field(2, _id(link.get("spanId"), 8))
                               + pw.string_field(3, link.get("traceState") or "")
                               + _json_attributes(4, link.get("attributes") or []))
    out += pw.varint_field(14, _int(obj.get("droppedLinksCount")))
    status = obj.get("status") or {}
    if status:
        out += pw.length_field(15, pw.string_field(2, status.get("message") or "")
                               + pw.varint_field(3, _enum(status.get("code"))))
    return bytes(out)


def from_json(obj) -> bytes:
    """An OTLP/JSON ExportTraceServiceRequest → the protobuf bytes."""
    if not isinstance(obj, dict):
        raise DecodeError("the body must be a JSON object")
    out = bytearray()
    try:
        for rs in obj.get("resourceSpans") or []:
            body = bytearray()
            res = rs.get("resource")
            if res is not None:
                body += pw.length_field(1, _json_attributes(1, res.get("attributes") or []))
            for ss in rs.get("scopeSpans") or []:
                scope_body = bytearray()
                sc = ss.get("scope")
                if sc is not None:
                    scope_body += pw.length_field(1, pw.string_field(1, sc.get("name") or "")
                                                  + pw.string_field(2, sc.get("version") or ""))
                for sp in ss.get("spans") or []:
                    if not isinstance(sp, dict):
                        raise DecodeError("a span must be an object")
                    scope_body += pw.length_field(2, _json_span(sp))
                scope_body += pw.string_field(3, ss.get("schemaUrl") or "")
                body += pw.length_field(2, bytes(scope_body))
            body += pw.string_field(3, rs.get("schemaUrl") or "")
            out += pw.length_field(1, bytes(body))
    except (AttributeError, TypeError):
        raise DecodeError("not an OTLP/JSON trace export") from None
    return bytes(out)

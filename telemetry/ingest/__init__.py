"""OTLP/HTTP trace ingestion: authenticate, decode, validate, turn spans into rows.

``handle`` is the whole of ``POST /v1/traces`` below HTTP: it answers in the
request's encoding (protobuf or JSON, per the OTLP specification: an
``ExportTraceServiceResponse`` on success, a ``google.rpc.Status`` on error)
and only answers 2xx once ``storage`` has committed the spans.

The package, one job a module: ``replies`` (errors and their OTLP answers),
``auth`` (ingest tokens and the deployments they prove, cached), ``decode``
(the body to a request), ``spans`` (validated spans to rows), ``genai`` (model,
tokens and price of a span), ``limits`` (cutting over-long values) and
``handler`` (the whole request, sync and async).

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

from .auth import Source, authenticate, cached_source, forget_sources
from .decode import content_format, decompress, parse
from .genai import AGENT_OPERATIONS, GENAI_KEYS, genai_values
from .handler import handle, handle_async, prepare
from .limits import MAX_ERROR, MAX_NAME, enforce_limits
from .replies import (
    CONTENT_TYPES,
    JSON,
    PROTOBUF,
    IngestError,
    Malformed,
    Reply,
    TooLarge,
    Unauthorized,
    Unavailable,
    UnknownDeployment,
    Unsupported,
    encode_reply,
)
from .spans import Batch, SpanRow, _value, extract

__all__ = [
    "AGENT_OPERATIONS", "CONTENT_TYPES", "GENAI_KEYS", "JSON", "MAX_ERROR", "MAX_NAME",
    "PROTOBUF", "Batch", "IngestError", "Malformed", "Reply", "Source", "SpanRow", "TooLarge",
    "Unauthorized", "Unavailable", "UnknownDeployment", "Unsupported", "_value",
    "authenticate", "cached_source", "content_format", "decompress", "encode_reply",
    "enforce_limits", "extract", "forget_sources", "genai_values", "handle", "handle_async",
    "parse", "prepare",
]

"""The OTLP answers: the request encodings, the ingest errors (each with its
HTTP status and gRPC code) and ``encode_reply``, which turns a success or an
error into the body OTLP/HTTP expects (an ``ExportTraceServiceResponse`` or a
``google.rpc.Status``) in the request's encoding."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from google.protobuf import json_format
from google.rpc.status_pb2 import Status
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
CONTENT_TYPES = {"application/x-protobuf": PROTOBUF, "application/protobuf": PROTOBUF,
                 "application/json": JSON}


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


"""``POST /v1/traces``, the OTLP/HTTP endpoint: HTTP only, the work is in ``ingest``.

Two doors to the same ``ingest`` code:

* :class:`OTLPReceiver` wraps the ASGI application (``controlplane.asgi``) and
  serves the endpoint *before* Django when the database is PostgreSQL: the
  body is decoded on the event loop and written with an async connection
  (``storage.write_spans_async``). Django's request cycle (handler, middleware,
  their thread hops) costs more CPU per request than decoding a hundred
  spans, and an exporter needs none of it: no session, CSRF or templates.
* :func:`traces`, a plain Django view, serves it everywhere else: under WSGI,
  in tests, and in the standalone SQLite shape.
"""
from __future__ import annotations

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from . import ingest

_pending = [0]


def _reply(reply: ingest.Reply) -> HttpResponse:
    response = HttpResponse(reply.body, status=reply.status, content_type=reply.content_type)
    for key, value in reply.headers.items():
        response[key] = value
    return response


def _error_reply(content_type: str, error: ingest.IngestError) -> ingest.Reply:
    try:
        fmt = ingest.content_format(content_type)
    except ingest.IngestError:
        fmt = ingest.JSON
    return ingest.encode_reply(fmt, error)


def _too_large() -> ingest.TooLarge:
    return ingest.TooLarge(f"the body is larger than {settings.HANGAR_INGEST_MAX_BYTES} bytes")


@csrf_exempt
def traces(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        response = HttpResponse(status=405)
        response["Allow"] = "POST"
        return response
    limit = settings.HANGAR_INGEST_MAX_BYTES
    content_type = request.headers.get("Content-Type", "")
    try:
        declared = int(request.headers.get("Content-Length") or 0)
    except ValueError:
        declared = 0
    if declared > limit:
        return _reply(_error_reply(content_type, _too_large()))
    body = request.read(limit + 1)
    if len(body) > limit:
        return _reply(_error_reply(content_type, _too_large()))
    return _reply(ingest.handle(
        body, content_type=content_type,
        content_encoding=request.headers.get("Content-Encoding", ""),
        authorization=request.headers.get("Authorization", "")))


class OTLPReceiver:
    """ASGI wrapper: ``/v1/traces`` served here on PostgreSQL, the rest by ``app``."""

    path = "/v1/traces"

    def __init__(self, app):
        self.app = app
        self._postgresql: bool | None = None

    def _serves(self) -> bool:
        # The vendor is read once: Django's ``connection`` is per asyncio task,
        # and each request is a new task, so reading it per request would build
        # a database wrapper (~35 µs) for every export.
        if self._postgresql is None:
            self._postgresql = connection.vendor == "postgresql"
        return self._postgresql and bool(settings.HANGAR_INGEST_CONNECTIONS)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != self.path or not self._serves():
            return await self.app(scope, receive, send)
        headers = {}
        for key, value in scope.get("headers", ()):
            headers[key.decode("latin-1").lower()] = value.decode("latin-1")
        content_type = headers.get("content-type", "")
        if scope["method"] != "POST":
            return await _send(send, 405, b"", "text/plain", {"allow": "POST"})
        limit = settings.HANGAR_INGEST_MAX_BYTES
        try:
            declared = int(headers.get("content-length") or 0)
        except ValueError:
            declared = 0
        if declared > limit:
            return await _send_reply(send, _error_reply(content_type, _too_large()))
        if _pending[0] >= settings.HANGAR_INGEST_MAX_PENDING:
            error = ingest.Unavailable("too many exports in progress; retry")
            return await _send_reply(send, _error_reply(content_type, error))
        _pending[0] += 1  # one event loop: no lock needed
        try:
            chunks, size, more = [], 0, True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return None
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    return await _send_reply(send, _error_reply(content_type, _too_large()))
                chunks.append(chunk)
                more = message.get("more_body", False)
            body = b"".join(chunks)
            del chunks
            reply = await ingest.handle_async(
                body, content_type=content_type,
                content_encoding=headers.get("content-encoding", ""),
                authorization=headers.get("authorization", ""))
        finally:
            _pending[0] -= 1
        return await _send_reply(send, reply)


async def _send_reply(send, reply: ingest.Reply) -> None:
    await _send(send, reply.status, reply.body, reply.content_type, reply.headers)


async def _send(send, status: int, body: bytes, content_type: str, headers: dict) -> None:
    raw = [(b"content-type", content_type.encode()),
           (b"content-length", str(len(body)).encode())]
    raw.extend((k.lower().encode(), str(v).encode()) for k, v in headers.items())
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})

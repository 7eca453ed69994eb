"""Instance logs over HTTP: a tail as text, or a follow as Server-Sent Events."""
from __future__ import annotations

import json
import time

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpResponse, StreamingHttpResponse

from .errors import Conflict, Invalid
from .models import Instance
from .runtimes import RuntimeFailure, get_driver

FOLLOW_LIMIT_S = 600  # a follow stream ends after ten minutes; clients reconnect


def log_response(instance: Instance, *, tail: int, follow: bool, request=None) -> HttpResponse:
    if not 0 <= tail <= 10_000:
        raise Invalid({"tail": ["Give 0 to 10000 lines."]})
    target = instance.target or instance.deployment.target
    driver = get_driver(target)
    if follow and not driver.features.supports_log_follow:
        raise Conflict(f"{target.get_kind_display()} targets cannot follow logs.")
    try:
        lines = driver.logs(instance.deployment_id, instance.name, tail=tail, follow=follow)
        first = [] if follow else list(lines)
    except RuntimeFailure as exc:
        raise Conflict(f"Cannot read logs: {exc}") from None
    if not follow:
        return HttpResponse("\n".join(first) + ("\n" if first else ""),
                            content_type="text/plain; charset=utf-8")

    def stream():
        deadline = time.monotonic() + FOLLOW_LIMIT_S
        yield ": following\n\n"
        try:
            for line in lines:
                yield f"data: {json.dumps(line)}\n\n"
                if time.monotonic() > deadline:
                    break
        except RuntimeFailure as exc:
            yield f"event: error\ndata: {json.dumps(str(exc))}\n\n"
        yield "event: end\ndata: {}\n\n"

    async def astream():
        # Under ASGI a sync iterator would be consumed whole before sending;
        # pull each chunk from a worker thread instead.
        chunks = stream()
        while True:
            chunk = await sync_to_async(next, thread_sensitive=False)(chunks, None)
            if chunk is None:
                return
            yield chunk

    asgi = isinstance(request, ASGIRequest) if request is not None else False
    response = StreamingHttpResponse(astream() if asgi else stream(),
                                     content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response

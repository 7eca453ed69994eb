"""Static files under ASGI without buffering: WhiteNoise answers with a file
response whose content is a synchronous iterator, which Django's ASGI handler
reads whole in a thread (and warns "StreamingHttpResponse must consume
synchronous iterators"). Served through ASGI, the file is read chunk by chunk
in a worker thread and streamed as an async iterator instead."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

from django.core.handlers.asgi import ASGIRequest
from whitenoise.middleware import WhiteNoiseMiddleware as _WhiteNoiseMiddleware


async def _read_in_thread(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    while True:
        chunk = await asyncio.to_thread(next, chunks, None)
        if chunk is None:
            return
        yield chunk


class WhiteNoiseMiddleware(_WhiteNoiseMiddleware):
    @staticmethod
    def serve(static_file, request):
        response = _WhiteNoiseMiddleware.serve(static_file, request)
        if isinstance(request, ASGIRequest) and response.streaming and not response.is_async:
            response.streaming_content = _read_in_thread(iter(response.streaming_content))
        return response

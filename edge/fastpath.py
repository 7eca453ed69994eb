"""The device poll served before Django: ``GET /api/v1/edge/state`` with
``If-None-Match``, on PostgreSQL.

Ten thousand devices polling mostly hear "nothing changed". That answer needs
the token's device (``edge.devicecache``: memory, kept true by PostgreSQL's
announcements; a miss is one indexed SELECT from the event loop) and its ETag,
nothing else: no session, CSRF, middleware or thread hop. So this wrapper
(``controlplane.asgi``, the process every server command starts) answers here:

* an unknown token → 401, a revoked device → 401 (the reasons Django gives);
* the ETag matches → 304, last seen noted in memory (``edge.auth.seen``,
  written for all devices at once every ``HANGAR_EDGE_LAST_SEEN_FLUSH_MS``);
* a long poll (``?wait=s``) whose ETag matches waits here, on the event loop,
  for the device's next announced change (no thread, no query while it
  waits), then answers 304 at the end of the wait or hands the changed
  state to Django.

Everything else goes on to Django unchanged: a poll without ``If-None-Match``,
a query other than ``wait=<seconds>``, a changed state (the 200 document), a
malformed ``Authorization``, any other route, a long poll while this process
is not listening, and every request when the database is not PostgreSQL or
cannot be read here (Django then answers, 503 if it cannot either).
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from urllib.parse import parse_qsl

import psycopg
from django.conf import settings

from . import devicecache
from . import state as desired
from .auth import hash_secret, seen
from .models import DeviceState

log = logging.getLogger("edge.fastpath")
PATH = "/api/v1/edge/state"
UNKNOWN = json.dumps({"detail": "Unknown device token."}).encode()
REVOKED = json.dumps({"detail": "This device is revoked."}).encode()


class DevicePoll:
    """ASGI wrapper: unchanged device polls answered here, the rest by ``app``."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if (scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "GET"
                or not devicecache.enabled()):
            return await self.app(scope, receive, send)
        wait = _wait(scope.get("query_string", b""))
        authorization = if_none_match = ""
        for key, value in scope.get("headers", ()):
            if key == b"authorization":
                authorization = value.decode("latin-1")
            elif key == b"if-none-match":
                if_none_match = value.decode("latin-1")
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if (wait is None or not if_none_match or scheme.lower() != "device" or not token
                or (wait and not devicecache.listening())):
            return await self.app(scope, receive, send)
        token_hash = hash_secret(token)
        deadline = time.monotonic() + min(wait, settings.HANGAR_EDGE_LONG_POLL_MAX_S)
        while True:
            # Watched before it is read: a change announced in between still wakes it.
            change = devicecache.watch(token_hash) if wait else None
            try:
                try:
                    known = await devicecache.lookup_async(token_hash)
                except (psycopg.Error, OSError) as exc:
                    log.warning("device poll handed to Django: %s", exc)
                    return await self.app(scope, receive, send)
                if known is None:
                    return await _answer(send, 401, UNKNOWN)
                if known.state == DeviceState.REVOKED:
                    return await _answer(send, 401, REVOKED)
                tag = desired.etag_for(known.device_id, known.state_version)
                if not desired.matches(if_none_match, tag):
                    return await self.app(scope, receive, send)  # the new document
                seen(known.device_id)
                remaining = deadline - time.monotonic()
                if change is None or remaining <= 0 or not devicecache.listening():
                    break
                # A device that leaves meanwhile is answered into the void (as
                # Django's long poll does): at most the long poll's maximum.
                await asyncio.wait({change}, timeout=remaining)
            finally:
                if change is not None:
                    devicecache.unwatch(token_hash, change)
        await send({"type": "http.response.start", "status": 304, "headers": [
            (b"etag", tag.encode()), (b"cache-control", b"no-cache")]})
        await send({"type": "http.response.body", "body": b""})
        return None


def _wait(query: bytes) -> int | None:
    """Seconds of long poll asked (0: none), or None for a query only Django
    should judge (anything but ``wait=<seconds>``)."""
    if not query:
        return 0
    pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
    if len(pairs) != 1 or pairs[0][0] != "wait" or not pairs[0][1].isdigit():
        return None
    return int(pairs[0][1])


async def _answer(send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-cache")]})
    await send({"type": "http.response.body", "body": body})

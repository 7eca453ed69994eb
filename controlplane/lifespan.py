"""ASGI lifespan of the web process: what starts and stops with it.

* the live-event relay, where the channel layer is in memory (standalone);
* on shutdown, the ingest path's and the device poll's connection pools are closed.

Servers run it with ``--lifespan on`` (uvicorn); a server without lifespan
support would serve pages without live updates in the standalone shape.
"""
from __future__ import annotations

import logging

from deployments import relay
from edge import devicecache
from telemetry import storage

log = logging.getLogger(__name__)


async def startup() -> None:
    if relay.needed():
        relay.start()


async def shutdown() -> None:
    await relay.stop()
    await storage.close_ingest_pool()
    await devicecache.close_pool()


async def lifespan(scope, receive, send) -> None:
    while True:
        event = await receive()
        if event["type"] == "lifespan.startup":
            try:
                await startup()
            except Exception as exc:
                log.exception("web process startup failed")
                await send({"type": "lifespan.startup.failed", "message": str(exc)})
                return
            await send({"type": "lifespan.startup.complete"})
        elif event["type"] == "lifespan.shutdown":
            try:
                await shutdown()
            finally:
                await send({"type": "lifespan.shutdown.complete"})
            return

"""The gateway's settings, from the environment (read once, failing loudly)."""
from __future__ import annotations

import os

from django.core.exceptions import ImproperlyConfigured


def _number(name: str, default: float, *, cast=float, minimum: float = 0, allow_none=False):
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if allow_none and raw.lower() in ("none", "off", "unlimited"):
        return None
    try:
        value = cast(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, not {raw!r}") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}")
    return value


# Seconds between full reloads of the endpoint table (live events reload it at once).
REFRESH_S = _number("HANGAR_GATEWAY_REFRESH_S", 2.0, minimum=0.1)
# Seconds a replica is left out after connection errors or a burst of 5xx.
EJECT_S = _number("HANGAR_GATEWAY_EJECT_S", 10.0)
# Seconds a checked bearer is remembered (a revoked one is refused within this).
AUTH_TTL_S = _number("HANGAR_GATEWAY_AUTH_TTL_S", 5.0)
# Largest request body, bytes (413 beyond).
MAX_BODY = _number("HANGAR_GATEWAY_MAX_BODY", 10 * 1024 * 1024, cast=int, minimum=1)
# Default limits per caller (a key's own limits win): requests/s and concurrent.
RATE_PER_S = _number("HANGAR_GATEWAY_RATE_PER_S", 100, cast=int, minimum=1, allow_none=True)
CONCURRENT = _number("HANGAR_GATEWAY_CONCURRENT", 100, cast=int, minimum=1, allow_none=True)
# Seconds to connect to a replica before trying another.
CONNECT_TIMEOUT_S = _number("HANGAR_GATEWAY_CONNECT_TIMEOUT_S", 3.0, minimum=0.01)
# Seconds a WebSocket session on a replica being removed has to end before both
# sides are closed with 1012 (service restart), so the client reconnects.
WS_DRAIN_S = _number("HANGAR_GATEWAY_WS_DRAIN_S", 10.0)

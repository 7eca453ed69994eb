"""ASGI entry point: HTTP through Django, websockets through Channels.

Websockets pass the session auth middleware and an Origin check against
ALLOWED_HOSTS before reaching a consumer; consumers check roles themselves.
"""
import gc
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from deployments.consumers import SocketAuthMiddlewareStack  # noqa: E402
from deployments.routing import websocket_urlpatterns  # noqa: E402
from edge.fastpath import DevicePoll  # noqa: E402
from telemetry.receiver import OTLPReceiver  # noqa: E402

from .lifespan import lifespan  # noqa: E402

application = ProtocolTypeRouter(
    {
        # OTLP exports (POST /v1/traces) and unchanged device polls
        # (GET /api/v1/edge/state → 304) are served before Django's middleware.
        "http": OTLPReceiver(DevicePoll(django_asgi_app)),
        "websocket": AllowedHostsOriginValidator(
            SocketAuthMiddlewareStack(URLRouter(websocket_urlpatterns))
        ),
        # Startup and shutdown of the web process (the standalone live relay).
        "lifespan": lifespan,
    }
)

# Everything imported so far lives as long as the process: move it out of the
# collector's sight, and collect the young generation less often. A web process
# holding a thousand websockets otherwise pauses for tens of milliseconds in
# full collections that find nothing, and every live event waits behind them.
gc.collect()
gc.freeze()
gc.set_threshold(50_000, 50, 100)

"""The gateway's own ASGI application, served by its own uvicorn process::

    uvicorn gateway.asgi:application --host 127.0.0.1 --port 8001 --lifespan on
"""
import logging
import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
django.setup()
# No line per proxied request (every request is a run already): Django's LOGGING
# would turn uvicorn's access log back on whatever --no-access-log said, and at a
# few thousand requests a second it cost the gateway ~7 % of its time.
# HANGAR_GATEWAY_ACCESS_LOG=1 keeps it.
if os.environ.get("HANGAR_GATEWAY_ACCESS_LOG", "").lower() not in ("1", "true", "yes", "on"):
    logging.getLogger("uvicorn.access").disabled = True

from .app import Gateway  # noqa: E402

application = Gateway()

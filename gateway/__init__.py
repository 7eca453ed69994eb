"""The real-time gateway: one stable URL per real-time deployment.

``/gw/<team>/<agent>/<environment>/<path>`` reaches the deployment's healthy,
ready instances on any of its targets. It is a boundary, not a view of the
dashboard: callers of agents are not users of Hangar, their traffic is long
(streams of minutes) and spiky, and it must scale and fail apart from the
control plane. So it is its own ASGI application (``gateway.asgi:application``),
run as its own uvicorn process (``scripts/run`` starts one next to the web
server), and it touches the database only off the request path:

* ``routes`` loads every deployment's endpoints into memory at start and again
  whenever a live event says instances or the deployment changed (and every
  ``HANGAR_GATEWAY_REFRESH_S`` as a safety net) — no query per proxied request;
* ``balancer`` picks a replica by least outstanding requests (power of two
  choices), ejects one for a while after connection errors or a burst of 5xx;
* ``proxy`` streams both ways (``upstream``: keep-alive HTTP/1.1 to the replicas,
  httptools' parser), retries once on another replica only when
  the connection failed before anything was sent, answers 502/503/504 with a
  reason, 413 for an oversized body, 404/409 for what it does not serve;
* ``limits`` holds per-caller and per-deployment limits in Redis, so several
  gateway processes enforce them together.

It imports ``deployments`` (above it in the import-linter layers), never the
other way round.
"""

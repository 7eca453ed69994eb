"""The LangGraph Agent Server routes, as the official ``langgraph-sdk`` calls
them, under ``/lg/<team>/`` of the gateway process::

    client = get_client(url="http://gateway:8001/lg/acme", api_key="hgk_…")

An assistant is a real-time deployment: ``<agent>:<environment>`` (or the
agent's slug alone when it runs in one environment). Auth: a gateway key or an
API token of the team, in ``x-api-key`` (what the SDK sends) or
``Authorization: Bearer``. Another team's thread, run or cron is a 404, like an
unknown one. Errors are ``{"detail": …}``: 404, 409 (a busy thread under
``reject``), 413 (state or body too large), 422 (bad input).

The package: ``app`` (``ThreadsServer``: the ASGI plumbing, auth, dispatch),
``http`` (a request, an answer, the route table), ``reads`` (JSON shapes and
the database reads), and the routes by resource — ``service`` (health, info,
assistants), ``threads``, ``runs`` (creating, streaming, joining, cancelling),
``crons``.
"""
from __future__ import annotations

from .app import ThreadsServer

__all__ = ["ThreadsServer"]

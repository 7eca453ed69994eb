"""Runtime drivers, chosen by ``Target.kind`` as Django chooses a database backend.

Drivers register by kind with dotted paths and load lazily; nothing outside
this package branches on the kind. See ``base.py`` for the contract,
``connections.py`` for the typed settings per kind, ``registry.py`` for the
drivers by kind.
"""
from __future__ import annotations

from .base import RuntimeFailure
from .connections import CONNECTION_SCHEMAS, connection_public_view, validate_connection
from .registry import DRIVERS, get_driver

__all__ = [
    "CONNECTION_SCHEMAS",
    "DRIVERS",
    "RuntimeFailure",
    "connection_public_view",
    "get_driver",
    "validate_connection",
]

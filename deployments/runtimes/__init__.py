"""Runtime drivers, chosen by ``Target.kind`` as Django chooses a database backend.

Drivers register by kind with dotted paths and load lazily; nothing outside
this package branches on the kind. See ``base.py`` for the contract.
"""
from __future__ import annotations

from .base import (
    CONNECTION_SCHEMAS,
    DRIVERS,
    RuntimeFailure,
    connection_public_view,
    get_driver,
    validate_connection,
)

__all__ = [
    "CONNECTION_SCHEMAS",
    "DRIVERS",
    "RuntimeFailure",
    "connection_public_view",
    "get_driver",
    "validate_connection",
]

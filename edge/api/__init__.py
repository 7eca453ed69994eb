"""The edge routes (`/api/v1/edge/…`) on one router: the device API
(``device``: enrol, state, bundles, status; device-token auth) and the
operator's fleet API (``fleet``: groups, tokens, devices, bundles, keys,
rollouts; the project's bearer/session auth, roles checked through
``deployments.access``)."""
from __future__ import annotations

from .common import router

# isort: off
from . import device, fleet  # noqa: F401
# isort: on

__all__ = ["router"]

"""The edge router and what its handlers share."""
from __future__ import annotations

from deployments.api.common import AppRouter

router = AppRouter(tags=["edge"])

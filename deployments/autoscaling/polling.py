"""When to read what patterns measure outside the runtime (a stream's lag),
by due time rather than by the reconcile sweep.

Beat runs :func:`deployments.tasks.poll_lag` every ``HANGAR_LAG_TICK_S``; it
asks :func:`readings_due` which readings fall before the next tick and enqueues
each at its own time (a countdown), so a stream polled every 0.5 s is read
every 0.5 s, not once per 5 s sweep. Each reading is then claimed by
``streams.poll.measure`` (at most one per polling interval, whoever asks) and
decided on by ``scaler.autoscale``.
"""
from __future__ import annotations

import time

from ..models import Deployment, DeploymentState
from ..patterns import PATTERNS, get_pattern

# Readings one deployment may have scheduled in one tick (a very short
# polling interval under a long tick is read at most this often per tick).
MAX_PER_TICK = 50


def readings_due(window_s: float, *, now: float | None = None) -> list[tuple[int, float]]:
    """(deployment id, seconds from now) for every reading due before
    ``now + window_s``, earliest first per deployment."""
    now = time.time() if now is None else now
    names = [name for name in PATTERNS if get_pattern(name).measures]
    due: list[tuple[int, float]] = []
    deployments = (Deployment.objects.filter(state=DeploymentState.ACTIVE,
                                             agent__pattern__in=names)
                   .select_related("agent", "version").order_by("pk"))
    for d in deployments:
        pattern = get_pattern(d.agent.pattern)
        polling = pattern.polling_s(d.version)
        at = pattern.reading_due_at(d)
        if not polling or at is None:
            continue
        countdown = max(0.0, at - now)
        for _ in range(MAX_PER_TICK):
            if countdown >= window_s:
                break
            due.append((d.pk, round(countdown, 3)))
            countdown += polling
    return due

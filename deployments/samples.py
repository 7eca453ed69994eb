"""Chart samples: the reconciler writes one ``DeploymentSample`` per deployment
and pass (desired and ready replicas, CPU, memory, in-flight requests); the
deployment page charts the last hour of them and the autoscaler decides from
the newest. Beat prunes the rest (``tasks.prune_samples``)."""
from __future__ import annotations

from datetime import datetime, timedelta

from django.utils import timezone

from .models import DeploymentSample

# Charts show an hour; two days leave room to look back at an incident.
SAMPLE_RETENTION = timedelta(days=2)
BATCH = 10_000


def prune(now: datetime | None = None) -> int:
    """Delete samples older than ``SAMPLE_RETENTION``, in batches (short
    transactions, no long lock on a table the reconciler writes to)."""
    cutoff = (now or timezone.now()) - SAMPLE_RETENTION
    old = DeploymentSample.objects.filter(at__lt=cutoff)
    deleted = 0
    while True:
        batch = list(old.values_list("pk", flat=True)[:BATCH])
        if not batch:
            return deleted
        deleted += DeploymentSample.objects.filter(pk__in=batch).delete()[0]

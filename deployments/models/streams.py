"""Stream deployments' lag, as Hangar measured it from the broker."""
from __future__ import annotations

from django.db import models
from django.utils import timezone

from .deployments import Deployment


class StreamSample(models.Model):
    """One lag reading of a stream deployment's source (every polling
    interval), for the charts and the lag autoscaler. ``error`` says why there
    is no figure (the broker could not be reached)."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE,
                                   related_name="stream_samples")
    at = models.DateTimeField(default=timezone.now)
    lag = models.BigIntegerField(null=True)  # not yet acknowledged (undelivered + pending)
    pending = models.BigIntegerField(null=True)  # delivered, not acknowledged
    produced = models.BigIntegerField(null=True)  # ever added to the source (rates)
    replicas = models.PositiveIntegerField(default=0)  # desired replicas at the reading
    error = models.CharField(max_length=300, blank=True)

    class Meta:
        indexes = [models.Index(fields=["deployment", "at"])]
        ordering = ["at"]

    def __str__(self) -> str:
        return f"{self.deployment_id}@{self.at:%H:%M:%S} lag={self.lag}"

"""Chart samples belong to deployments, which prune them (not telemetry's retention)."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from deployments import samples, tasks
from deployments.models import DeploymentSample
from telemetry import storage

from .factories import DeploymentFactory

pytestmark = pytest.mark.django_db(transaction=True)  # retention creates partitions


def test_old_chart_samples_are_pruned_by_a_deployments_beat_task():
    deployment = DeploymentFactory()
    now = timezone.now()
    for age in (timedelta(minutes=5), timedelta(days=1), timedelta(days=3), timedelta(days=9)):
        DeploymentSample.objects.create(deployment=deployment, at=now - age, desired=1, ready=1)
    assert "samples_deleted" not in storage.retention(now)
    assert DeploymentSample.objects.count() == 4  # telemetry leaves them alone
    assert samples.prune(now) == 2
    assert sorted(now - at for at in DeploymentSample.objects.values_list("at", flat=True)) == [
        timedelta(minutes=5), timedelta(days=1)]
    assert tasks.prune_samples.apply().get() == 0
    schedule = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert "deployments.tasks.prune_samples" in schedule

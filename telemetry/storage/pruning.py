"""Retention: old span partitions dropped (or rows deleted), old runs and
compute cost rows deleted in batches."""
from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from ..models import ComputeCost, Run
from .partitioning import NS_PER_DAY, create_partition, partitions


def retention(now: datetime | None = None) -> dict:
    """Create partitions a week ahead, drop span partitions (or rows) older than
    ``HANGAR_SPAN_RETENTION_DAYS``, delete runs and compute cost rows older than
    ``HANGAR_RUN_RETENTION_DAYS`` in batches. (Deployments prune their own
    chart samples: ``deployments.samples``.)"""
    now = now or timezone.now()
    span_cutoff = now - timedelta(days=settings.HANGAR_SPAN_RETENTION_DAYS)
    cutoff_ns = int(span_cutoff.timestamp()) * 1_000_000_000
    report = {"partitions_created": 0, "partitions_dropped": 0, "spans_deleted": 0}
    if connection.vendor == "postgresql":
        today = now.astimezone(UTC).date()
        for offset in range(-1, 8):
            report["partitions_created"] += create_partition(today + timedelta(days=offset))
        for name, day in partitions():
            if (day - date(1970, 1, 1)).days * NS_PER_DAY + NS_PER_DAY <= cutoff_ns:
                with transaction.atomic(), connection.cursor() as cursor:
                    cursor.execute(f"ALTER TABLE telemetry_span DETACH PARTITION {name}")
                    cursor.execute(f"DROP TABLE {name}")
                report["partitions_dropped"] += 1
        report["spans_deleted"] = _batched(
            "DELETE FROM telemetry_span_default WHERE ctid IN (SELECT ctid FROM "
            "telemetry_span_default WHERE start_ns < %s LIMIT 10000)", [cutoff_ns])
    else:
        report["spans_deleted"] = _batched(
            "DELETE FROM telemetry_span WHERE rowid IN (SELECT rowid FROM telemetry_span "
            "WHERE start_ns < %s LIMIT 10000)", [cutoff_ns])
    run_cutoff = now - timedelta(days=settings.HANGAR_RUN_RETENTION_DAYS)
    report["runs_deleted"] = _delete_in_batches(Run.objects.filter(first_seen_at__lt=run_cutoff))
    report["compute_rows_deleted"] = _delete_in_batches(
        ComputeCost.objects.filter(hour__lt=run_cutoff))
    return report


def _batched(sql: str, params: list) -> int:
    total = 0
    while True:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql, params)
            deleted = cursor.rowcount
        total += max(deleted, 0)
        if deleted < 10000:
            return total


def _delete_in_batches(queryset) -> int:
    total = 0
    while True:
        ids = list(queryset.values_list("pk", flat=True)[:5000])
        if not ids:
            return total
        total += queryset.model.objects.filter(pk__in=ids).delete()[0]

"""Leases and the sweep: what keeps runs from being lost or left running when
gateway processes stop."""
from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from ..models import ACTIVE, RunStatus, Thread, ThreadRun, ThreadStatus
from .base import _start_next


def renew(owner: str, run_ids) -> int:
    """Extend the leases of the runs this process is running."""
    if not run_ids:
        return 0
    lease = timezone.now() + timedelta(seconds=settings.HANGAR_THREADS_LEASE_S)
    return ThreadRun.objects.filter(pk__in=list(run_ids), owner=owner,
                                    status=RunStatus.RUNNING).update(lease_until=lease)


def sweep(owner: str, now: datetime | None = None, limit: int = 100) -> list[ThreadRun]:
    """Repair what stopped processes left: runs whose lease ran out are ``error``
    (never left running) and their threads move on; threads with pending runs
    and none running get their next run started; threads stuck ``busy`` with
    nothing active are ``idle``; expired threads are deleted. Returns the runs
    ``owner`` must start."""
    # Stamps are read with each thread held (as admit does), unless a time is given.
    clock = timezone.now if now is None else (lambda: now)
    now = now or timezone.now()
    started: list[ThreadRun] = []
    lost = list(ThreadRun.objects.filter(status=RunStatus.RUNNING, lease_until__lt=now)
                .values_list("pk", "thread_id", "owner")[:limit])
    for run_id, thread_id, was_owner in lost:
        with transaction.atomic():
            thread = None
            if thread_id is not None:
                thread = (Thread.objects.select_for_update(skip_locked=True)
                          .filter(pk=thread_id).first())
                if thread is None:
                    continue  # someone holds it: next pass
            at = clock()
            reason = (f"the gateway process running it ({was_owner}) stopped: no lease "
                      f"renewal for {settings.HANGAR_THREADS_LEASE_S:g}s")
            if not ThreadRun.objects.filter(pk=run_id, status=RunStatus.RUNNING,
                                            lease_until__lt=now).update(
                    status=RunStatus.ERROR, error=reason, ended_at=at, updated_at=at):
                continue
            if thread is not None:
                nxt = _start_next(thread, owner, at)
                thread.status = ThreadStatus.BUSY if nxt else ThreadStatus.IDLE
                thread.updated_at = at
                thread.save(update_fields=["status", "updated_at"])
                if nxt:
                    started.append(nxt)
    running = ThreadRun.objects.filter(thread=OuterRef("pk"), status=RunStatus.RUNNING)
    pending = ThreadRun.objects.filter(thread=OuterRef("pk"), status=RunStatus.PENDING)
    waiting = list(Thread.objects.filter(Exists(pending)).exclude(Exists(running))
                   .values_list("pk", flat=True)[:limit])
    for thread_id in waiting:
        with transaction.atomic():
            thread = (Thread.objects.select_for_update(skip_locked=True)
                      .filter(pk=thread_id).first())
            if thread is None or ThreadRun.objects.filter(
                    thread=thread, status=RunStatus.RUNNING).exists():
                continue
            nxt = _start_next(thread, owner, clock())
            if nxt:
                thread.status = ThreadStatus.BUSY
                thread.save(update_fields=["status"])
                started.append(nxt)
    with transaction.atomic():  # stateless runs a cron left pending
        for run in (ThreadRun.objects.filter(thread__isnull=True, status=RunStatus.PENDING)
                    .select_for_update(skip_locked=True).order_by("created_at")[:limit]):
            ThreadRun.objects.filter(pk=run.pk).update(
                status=RunStatus.RUNNING, owner=owner, started_at=now, updated_at=now,
                lease_until=now + timedelta(seconds=settings.HANGAR_THREADS_LEASE_S))
            started.append(run)
    active = ThreadRun.objects.filter(thread=OuterRef("pk"), status__in=ACTIVE)
    Thread.objects.filter(status=ThreadStatus.BUSY).exclude(Exists(active)).filter(
        updated_at__lt=now - timedelta(seconds=1)).update(status=ThreadStatus.IDLE)
    Thread.objects.filter(expires_at__lt=now).exclude(Exists(active)).delete()
    return started


def timed_out(owner: str, now: datetime | None = None) -> list[str]:
    """Running runs past their timeout whose process did not end them."""
    now = now or timezone.now()
    return [str(pk) for pk, started, limit in ThreadRun.objects.filter(
        status=RunStatus.RUNNING, started_at__isnull=False).exclude(owner=owner)
        .values_list("pk", "started_at", "timeout_s")[:500]
        if started + timedelta(seconds=limit + 5) < now]


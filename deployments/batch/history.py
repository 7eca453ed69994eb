"""History limits per schedule, as Kubernetes' successful/failed jobs history
limits: the newest ``succeeded_history`` succeeded runs are kept, and the
newest ``failed_history`` of the others (failed, timed out, cancelled,
skipped). Pending and running runs are never pruned."""
from __future__ import annotations

from ..models import JobRun, JobStatus, Schedule

UNSUCCESSFUL = (JobStatus.FAILED, JobStatus.TIMEOUT, JobStatus.CANCELLED, JobStatus.SKIPPED)


def prune(schedule: Schedule) -> int:
    """Delete the finished runs beyond the schedule's limits; how many."""
    deleted = 0
    for statuses, keep in (((JobStatus.SUCCEEDED,), schedule.succeeded_history),
                           (UNSUCCESSFUL, schedule.failed_history)):
        old = list(JobRun.objects.filter(schedule=schedule, status__in=statuses)
                   .order_by("-finished_at", "-pk").values_list("pk", flat=True)[keep:])
        if old:
            deleted += JobRun.objects.filter(pk__in=old).delete()[0]
    return deleted

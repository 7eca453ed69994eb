"""Live events of ingestion: ``run.finished``, coalesced per deployment."""
from __future__ import annotations

from functools import partial

from django.db import connection

from deployments.events import Coalescer, publish

from ..jobs import link_job_runs
from ..models import Run
from .runs import WriteResult


class RunAnnouncer:
    """Publishes ``run.finished`` for a deployment at most once per ``window``
    seconds per process, always including the last (trailing edge), without
    blocking ingestion: the events' coalescer, with every send (a query for
    the latest run, then the publisher) on its timer thread. Best effort: the
    spans are already committed, so a failing channel layer only logs."""

    def __init__(self, window: float = 1.0):
        self.coalescer = Coalescer(window, inline=False)

    def finished(self, team_id: int, deployment_id: int) -> None:
        self.coalescer.submit(deployment_id, partial(_announce, team_id, deployment_id))


def _announce(team_id: int, deployment_id: int) -> None:
    try:
        publish_latest_run(team_id, deployment_id)
        link_job_runs(team_id, deployment_id)  # a batch job's tokens, cost and items
    finally:
        connection.close()  # a timer thread keeps no connection


def publish_latest_run(team_id: int, deployment_id: int) -> None:
    run = (Run.objects.filter(deployment_id=deployment_id, root_span_id__isnull=False)
           .order_by("-started_at").values("id", "status").first())
    if run is not None:
        publish(team_id, "run.finished", {"run_id": run["id"], "status": run["status"]},
                deployment_id=deployment_id)


ANNOUNCER = RunAnnouncer()


def announce(source, result: WriteResult) -> None:
    if result.finished:
        ANNOUNCER.finished(source.team_id, source.deployment_id)

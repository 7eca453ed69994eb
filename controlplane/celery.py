"""The Celery application: workers launch, scale and heal agents; beat sweeps."""
from __future__ import annotations

import os

from celery import Celery, signals
from django.conf import settings
from django.db import connections

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")

app = Celery("hangar")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


def bound_connections(role: str) -> None:
    """Give this process the worker-sized database pool instead of the web one.

    Runs before the worker's first query: in the main process of ``celery
    worker`` (prefork children inherit the settings, each opens a pool of its
    own, closed again by Celery's Django fixup after every task) and in ``celery
    beat``. The pool's ``min_size`` is 0, so an idle worker holds nothing.
    """
    options = settings.DATABASES["default"].get("OPTIONS", {})
    if "pool" not in options:
        return  # standalone (SQLite)
    options["pool"] = dict(settings.HANGAR_WORKER_DB_POOL)
    options["application_name"] = f"hangar-{role}"
    connections["default"].close_pool()  # a pool built before this point is rebuilt


@signals.celeryd_init.connect
def _worker_pool(**_) -> None:
    bound_connections("worker")


@signals.beat_init.connect
def _beat_pool(**_) -> None:
    bound_connections("beat")

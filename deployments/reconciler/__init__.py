"""The reconciler: level-triggered and idempotent, like a Kubernetes controller.

``reconcile(id)`` reads the whole desired state (the Deployment row, through
its pattern) and the whole observed state (runtime objects found by their
labels, on every eligible target), computes the difference, applies it,
records timeline events and writes health with a human reason; it returns an
:class:`Outcome` saying when it wants another pass, and the Celery task
reschedules. A worker killed at any point leaves nothing the next pass cannot
finish:

* an Instance row is committed *before* its runtime object is created, and the
  object carries the row's name, so the next pass either creates it or finds it;
* labelled objects without a row are adopted; rows whose object vanished are
  marked lost and re-created; extra objects are removed;
* one pass per deployment at a time (``lock``).

One module per job:

``run``        a pass from start to end; the autoscaler after it, outside the lock
``context``    what a pass knows and collects (``Pass``, ``Outcome``, threads)
``lock``       the advisory/file lock
``observe``    list runtime objects, adopt, mark lost
``converge``   roll out, scale, launch (concurrently across and within targets)
``placement``  eligible targets, spread, ports per target / port space
``restarts``   the restart budget
``health``     probe, judge (driver + pattern), roll up, write health
``samples``    chart points
``specs``      what drivers are given
``managed``    drivers that manage replicas themselves (Kubernetes)
``gc``         teardown, orphans, target probes
"""
from __future__ import annotations

from .context import Outcome, Pass
from .gc import collect_orphans, probe_targets, teardown
from .lock import LOCK_CLASS, deployment_lock
from .placement import eligible_targets
from .run import reconcile, reconcile_deployment, run_pass
from .specs import health_check, instance_env, instance_spec

__all__ = [
    "LOCK_CLASS", "Outcome", "Pass", "collect_orphans", "deployment_lock", "eligible_targets",
    "health_check", "instance_env", "instance_spec", "probe_targets", "reconcile",
    "reconcile_deployment", "run_pass", "teardown",
]

"""One reconcile pass, start to end, and what follows it outside the lock."""
from __future__ import annotations

from django.db import transaction

from .. import events
from ..autoscaling.scaler import autoscale
from ..models import Deployment, DeploymentEvent, DeploymentState, Health, Instance
from ..patterns import Verdict
from . import converge, health, observe
from .context import SEEN_FIELDS, Outcome, Pass
from .lock import deployment_lock
from .managed import run_managed
from .placement import eligible_targets


def reconcile(deployment_id: int) -> Outcome:
    """A pass under the deployment's lock, then the autoscaler's decision
    (outside the lock). The caller reschedules by ``requeue_in``."""
    outcome = run_pass(deployment_id)
    if outcome.word == "gone":
        return outcome
    decision = autoscale(deployment_id)
    if decision is not None and decision.desired != decision.current:
        outcome = outcome.sooner(1)  # the verb also enqueues a pass on commit
    return outcome


def reconcile_deployment(deployment_id: int) -> str:
    """One pass and its autoscaling decision; returns a word for logs and
    tests ("busy" when another worker holds the lock, "gone", or the health)."""
    return reconcile(deployment_id).word


def run_pass(deployment_id: int) -> Outcome:
    with deployment_lock(deployment_id) as acquired:
        if not acquired:
            return Outcome("busy")
        deployment = (Deployment.objects.select_related("agent__team", "version", "target",
                                                        "revision")
                      .filter(pk=deployment_id).first())
        if deployment is None:
            return Outcome("gone")
        run = Pass.open(deployment, eligible_targets(deployment))
        before = _instances_seen(deployment_id)
        try:
            word = _lifecycle(run)
        finally:
            _flush(run, before)
        # A change made during the pass found the lock held (its own pass was
        # "busy"): look again at once rather than at the next sweep.
        if not Deployment.objects.filter(pk=deployment_id, generation=deployment.generation,
                                         state=deployment.state).exists():
            run.requeue(0.05)
    return Outcome(word, run.requeue_in)


def _lifecycle(run: Pass) -> str:
    d, driver = run.deployment, run.primary
    if driver is None:
        return health.write(run, Verdict(Health.UNKNOWN, run.unreachable.get(d.target_id, "")))
    if driver.features.manages_replicas:
        return run_managed(run)
    if not driver.features.pushes_instances:
        return health.write(run, Verdict(Health.UNKNOWN, "waiting for edge devices to check in"))
    observed = observe.observe(run)
    rows = observe.sync(run, observed)
    desired = run.pattern.desired(d, d.version, features=driver.features)
    if d.state == DeploymentState.ACTIVE:
        rows = converge.converge(run, rows, desired.replicas)
    elif d.state == DeploymentState.STOPPED:
        rows = converge.remove(run, rows, rows, "deployment stopped")
    rows = health.probe(run, rows, observed)
    return health.rollup(run, rows)


def _instances_seen(deployment_id: int) -> list:
    """What the instance tables show, less CPU and memory (those move every
    sample and arrive with the ``sample`` event)."""
    return list(Instance.objects.filter(deployment_id=deployment_id).order_by("name")
                .values_list(*SEEN_FIELDS))


def _flush(run: Pass, before: list) -> None:
    d = run.deployment
    if _instances_seen(d.pk) != before:  # an idle pass does not make every page re-fetch
        events.publish(d.agent.team_id, "instances", {}, deployment_id=d.pk)
    if not run.events:
        return
    with transaction.atomic():
        DeploymentEvent.objects.bulk_create(run.events)
        for event in run.events[-20:]:
            events.publish(d.agent.team_id, events.Timeline.of(event), deployment_id=d.pk)

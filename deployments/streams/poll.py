"""Lag measured by Hangar, every polling interval: one reading from the
broker stored as a :class:`StreamSample` (a reading that failed is stored too,
with the broker's words), the consumer group created when it is missing, and
the source's reachability kept on the deployment (``autoscale_state["stream"]``)
so its health says why while the broker is away — once on the timeline when it
goes and once when it is back.

Readings are scheduled by due time (``autoscaling.polling``: beat's lag tick
enqueues each reading due before its next tick at its own time), so a polling
interval shorter than the reconcile sweep is honoured; a reconcile pass also
reads when one is due."""
from __future__ import annotations

import hashlib
import time

from django.db import transaction
from django.utils import timezone

from .. import events
from ..errors import Invalid
from ..models import Deployment, DeploymentEvent, DeploymentState, StreamSample
from . import config_for, get_source
from .base import LagReading, SourceUnavailable

# A reading is due once this share of the polling interval has passed since
# the last one was claimed: a scheduled reading that runs a little early or a
# little late keeps its slot instead of being skipped to the next one.
EARLY = 0.1


def due_at(deployment: Deployment, polling_s: float) -> float:
    """When the next reading is due (unix time): ``polling_s`` after the last
    one was claimed, or now if none was."""
    last = ((deployment.autoscale_state or {}).get("stream") or {}).get("read_at")
    return time.time() if last is None else float(last) + polling_s


def due_in(deployment: Deployment, polling_s: float) -> float:
    """Seconds until the next reading is due (<= 0: now)."""
    return due_at(deployment, polling_s) - time.time()


def measure(deployment: Deployment, settings, *, force: bool = False) -> StreamSample | None:
    """Read the source's lag if a reading is due (or ``force``); None if not.

    The reading is claimed first (its time written under the deployment's row
    lock), so the beat's scheduled readings and a reconcile pass's never ask
    the broker twice for one interval."""
    d = deployment
    if d.state != DeploymentState.ACTIVE or settings.source is None:
        return None
    state = _claim(d, settings.polling_s, force=force)
    if state is None:
        return None
    group = state.get("group")
    try:
        config = config_for(settings, team_id=d.agent.team_id)
    except Invalid as exc:
        reading = LagReading(at=timezone.now(), error="; ".join(
            m for messages in exc.detail.values() for m in messages))
    else:
        source = get_source(config)
        try:
            key = _fingerprint(config)
            if group != key or state.get("error"):
                source.ensure_group()  # idempotent; a missing group is created here
                group = key
            reading = source.lag()
        except SourceUnavailable as exc:
            reading = LagReading(at=timezone.now(), error=str(exc.detail))
        finally:
            source.close()
    return _store(d, reading, group)


def _claim(d: Deployment, polling_s: float, *, force: bool) -> dict | None:
    """The stream state with this reading's claim in it, or None when the
    last reading was claimed less than a polling interval ago."""
    with transaction.atomic():
        current = (Deployment.objects.select_for_update(of=("self",)).filter(pk=d.pk)
                   .values_list("autoscale_state", flat=True).first())
        if current is None and not Deployment.objects.filter(pk=d.pk).exists():
            raise Deployment.DoesNotExist
        autoscale_state = dict(current or {})
        state = dict(autoscale_state.get("stream") or {})
        now = time.time()
        last = state.get("read_at")
        if not force and last is not None and now - float(last) < polling_s * (1 - EARLY):
            return None
        state["read_at"] = now
        autoscale_state["stream"] = state
        Deployment.objects.filter(pk=d.pk).update(autoscale_state=autoscale_state)
        d.autoscale_state = autoscale_state
    return state


def _store(d: Deployment, reading: LagReading, group: str | None) -> StreamSample:
    with transaction.atomic():
        current = (Deployment.objects.select_for_update(of=("self",)).filter(pk=d.pk)
                   .values_list("autoscale_state", "replicas").first())
        if current is None:
            raise Deployment.DoesNotExist
        autoscale_state, replicas = current
        state = dict((autoscale_state or {}).get("stream") or {})
        was = state.get("error") or ""
        state["error"] = reading.error
        if group:
            state["group"] = group
        d.autoscale_state = {**(autoscale_state or {}), "stream": state}
        Deployment.objects.filter(pk=d.pk).update(autoscale_state=d.autoscale_state)
        sample = StreamSample.objects.create(
            deployment=d, at=reading.at, lag=reading.lag, pending=reading.pending,
            produced=reading.produced, replicas=replicas, error=reading.error[:300])
        event = None
        if reading.error and not was:
            event = DeploymentEvent.objects.create(
                deployment=d, reason="StreamUnreachable", type=DeploymentEvent.Type.WARNING,
                message=f"cannot read the stream's lag: {reading.error}"[:1000])
        elif was and not reading.error:
            event = DeploymentEvent.objects.create(
                deployment=d, reason="StreamReachable",
                message=f"stream reachable again: lag {reading.lag:,}")
        if event is not None:
            events.publish(d.agent.team_id, events.Timeline.of(event), deployment_id=d.pk)
        events.publish(d.agent.team_id, "sample", {}, deployment_id=d.pk)
    return sample


def _fingerprint(config) -> str:
    """Which group was ensured (the URL hashed: state is not a place for it)."""
    raw = "\0".join([config.kind, config.url, config.stream, config.group,
                     ",".join(config.subjects), config.output, config.deadletter])
    return hashlib.sha256(raw.encode()).hexdigest()[:16]

"""The reconciler: level-triggered and idempotent, like a Kubernetes controller.

``reconcile_deployment(id)`` reads the whole desired state (the Deployment row)
and the whole observed state (runtime objects found by their labels, on every
eligible target), computes the difference, applies it, records timeline events
and writes health with a human reason. A worker killed at any point leaves
nothing the next pass cannot finish:

* an Instance row is committed *before* its runtime object is created, and the
  object carries the row's name, so the next pass either creates it or finds it;
* labelled objects without a row are adopted; rows whose object vanished are
  marked lost and re-created; extra objects are removed;
* one reconcile per deployment at a time (a PostgreSQL advisory lock held by
  the worker's connection, so a killed worker releases it at once).
"""
from __future__ import annotations

import fcntl
import logging
import math
import secrets
import socket
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Count
from django.utils import timezone

from . import events
from .models import (
    AgentVersion,
    Deployment,
    DeploymentEvent,
    DeploymentSample,
    DeploymentState,
    Health,
    Instance,
    InstancePhase,
    Secret,
    Target,
    worst_health,
)
from .runtimes import RuntimeFailure, get_driver
from .runtimes.base import (
    Autoscale,
    DeploymentSpec,
    HealthCheck,
    InstanceSpec,
    ObservedInstance,
    Probe,
)

log = logging.getLogger(__name__)
LOCK_CLASS = 0x4847  # "HG": advisory-lock namespace for deployments
PARALLEL = 8
SAMPLE_EVERY_S = 5


# Locking ------------------------------------------------------------------------------


@contextmanager
def deployment_lock(deployment_id: int):
    """Yield True if this process now reconciles ``deployment_id`` alone."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [LOCK_CLASS, deployment_id])
            acquired = cursor.fetchone()[0]
        try:
            yield acquired
        finally:
            if acquired:
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_unlock(%s, %s)",
                                   [LOCK_CLASS, deployment_id])
        return
    folder = Path(settings.DATA_DIR) / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / f"deployment-{deployment_id}.lock").open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# Specs ---------------------------------------------------------------------------------


def health_check(version: AgentVersion) -> HealthCheck | None:
    if not version.port:
        return None
    health = version.health or {}
    return HealthCheck(
        path=health.get("path", "/healthz"),
        ready_path=health.get("ready_path", "/readyz"),
        timeout_s=float(health.get("timeout_s", 2.0)),
        progress_deadline_s=float(health.get("progress_deadline_s",
                                             settings.HANGAR_PROGRESS_DEADLINE_S)),
    )


def instance_env(deployment: Deployment, version: AgentVersion, name: str) -> dict[str, str]:
    env = {str(k): str(v) for k, v in (version.env or {}).items()}
    refs = list(version.secret_refs or [])
    if refs:
        values = dict(Secret.objects.filter(team_id=deployment.agent.team_id, name__in=refs)
                      .values_list("name", "value"))
        missing = sorted(set(refs) - set(values))
        if missing:
            raise RuntimeFailure(f"secret(s) not found: {', '.join(missing)}", permanent=True)
        env.update(values)
    env.update({
        "HANGAR_DEPLOYMENT": str(deployment.pk),
        "HANGAR_INSTANCE": name,
        "HANGAR_AGENT": deployment.agent.slug,
        "HANGAR_ENVIRONMENT": deployment.environment,
        "HANGAR_VERSION": str(version.number),
        "AGENT_MODE": env.get("AGENT_MODE", deployment.agent.pattern),
        "OTEL_SERVICE_NAME": f"{deployment.agent.team.slug}.{deployment.agent.slug}",
        "OTEL_EXPORTER_OTLP_ENDPOINT": settings.HANGAR_OTLP_ENDPOINT,
    })
    if deployment.ingest_token:
        env["OTEL_EXPORTER_OTLP_HEADERS"] = f"authorization=Bearer {deployment.ingest_token}"
    return env


def instance_spec(deployment: Deployment, row: Instance) -> InstanceSpec:
    version = row.version or deployment.version
    return InstanceSpec(
        deployment_id=deployment.pk, name=row.name, generation=row.generation,
        team=deployment.agent.team.slug, agent=deployment.agent.slug,
        pattern=deployment.agent.pattern, image=version.image, bundle=version.bundle,
        command=tuple(version.command or ()), env=instance_env(deployment, version, row.name),
        cpu=float(version.cpu), memory_mb=version.memory_mb, port=row.port,
        health=health_check(version), version=str(version.number),
    )


def eligible_targets(deployment: Deployment) -> list[Target]:
    targets = [deployment.target]
    selector = deployment.placement or {}
    if selector:
        for target in Target.objects.filter(team_id=deployment.target.team_id,
                                            kind=deployment.target.kind).order_by("name"):
            if target.pk != deployment.target_id and all(
                    target.labels.get(k) == v for k, v in selector.items()):
                targets.append(target)
    return targets


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# The reconciler ------------------------------------------------------------------------


@dataclass
class Pass:
    deployment: Deployment
    now: object = field(default_factory=timezone.now)
    events: list = field(default_factory=list)
    requeue_in: float | None = None

    def event(self, reason: str, message: str, *, instance: str = "", warning: bool = False):
        self.events.append(DeploymentEvent(
            deployment_id=self.deployment.pk, reason=reason, message=message[:1000],
            instance=instance, type="Warning" if warning else "Normal"))
        log.info("deployment %s: %s %s", self.deployment.pk, reason, message)

    def requeue(self, seconds: float) -> None:
        self.requeue_in = seconds if self.requeue_in is None else min(self.requeue_in, seconds)


def reconcile_deployment(deployment_id: int) -> str:
    """One reconcile pass; returns a word for logs and tests."""
    with deployment_lock(deployment_id) as acquired:
        if not acquired:
            return "busy"
        deployment = (Deployment.objects.select_related("agent__team", "version", "target")
                      .filter(pk=deployment_id).first())
        if deployment is None:
            return "gone"
        run = Pass(deployment)
        before = _instances_seen(deployment_id)
        try:
            result = Reconciler(run).run()
        finally:
            _flush(run, before)
    if run.requeue_in is not None:
        from .tasks import reconcile

        reconcile.apply_async((deployment_id,), countdown=run.requeue_in,
                              expires=run.requeue_in + 30)
    return result


def _instances_seen(deployment_id: int) -> list:
    """What the instance tables show, less CPU and memory (those move every
    sample and arrive with the ``sample`` event)."""
    return list(Instance.objects.filter(deployment_id=deployment_id).order_by("name").values_list(
        "name", "phase", "health", "health_reason", "host", "restarts", "version_id"))


def _flush(run: Pass, before: list) -> None:
    d = run.deployment
    if _instances_seen(d.pk) != before:  # an idle pass does not make every page re-fetch
        events.publish(d.agent.team_id, "instances", {}, deployment_id=d.pk)
    if not run.events:
        return
    with transaction.atomic():
        DeploymentEvent.objects.bulk_create(run.events)
        d = run.deployment
        for event in run.events[-20:]:
            events.publish(d.agent.team_id, "timeline", {
                "reason": event.reason, "message": event.message, "type": event.type,
                "instance": event.instance}, deployment_id=d.pk)


class Reconciler:
    def __init__(self, run: Pass):
        self.op = run
        self.d = run.deployment
        self.targets = {t.pk: t for t in eligible_targets(self.d)}
        self.drivers = {}
        self.unreachable: dict[int, str] = {}
        for target in self.targets.values():
            try:
                self.drivers[target.pk] = get_driver(target)
            except RuntimeFailure as exc:
                self.unreachable[target.pk] = str(exc)
        self.primary = self.drivers.get(self.d.target_id)

    def run(self) -> str:
        if self.primary is None:
            return self._write_health(Health.UNKNOWN, self.unreachable.get(self.d.target_id, ""))
        if self.primary.features.manages_replicas:
            return ManagedReconciler(self).run()
        if not self.primary.features.pushes_instances:
            return self._write_health(Health.UNKNOWN, "waiting for edge devices to check in")
        observed = self._observe()
        rows = self._sync(observed)
        if self.d.state == DeploymentState.ACTIVE:
            rows = self._converge(rows, observed)
        elif self.d.state == DeploymentState.STOPPED:
            rows = self._remove(rows, rows, "deployment stopped")
        rows = self._probe(rows, observed)
        self._autoscale(rows)
        return self._rollup(rows)

    # Observe ----------------------------------------------------------------------
    def _observe(self) -> dict[str, tuple[int, ObservedInstance]]:
        observed = {}
        for target_id, driver in self.drivers.items():
            try:
                for item in driver.list_instances(self.d.pk):
                    observed[item.name] = (target_id, item)
            except RuntimeFailure as exc:
                self.unreachable[target_id] = str(exc)
        return observed

    def _sync(self, observed) -> list[Instance]:
        """Make rows mirror what exists: adopt, update, mark lost."""
        rows = {r.name: r for r in Instance.objects.filter(deployment=self.d)
                .select_related("version")}
        versions = {str(v.number): v for v in self.d.agent.versions.all()}
        for name, (target_id, item) in observed.items():
            if name not in rows:
                row = Instance(deployment=self.d, name=name, target_id=target_id,
                               version=versions.get(item.version), generation=item.generation,
                               port=item.port, runtime_id=item.runtime_id,
                               phase=InstancePhase.STARTING, started_at=item.started_at)
                try:
                    with transaction.atomic():
                        row.save()
                except IntegrityError:
                    row.port = None
                    row.save()
                rows[name] = row
                self.op.event("Adopted", f"{name}: found on {self.targets[target_id].name} "
                               "with Hangar's labels; adopted", instance=name)
        for name, row in rows.items():
            if name in observed:
                self._apply_observation(row, observed[name][1])
            elif row.target_id in self.unreachable:
                continue
            elif row.runtime_id and row.phase not in (InstancePhase.FAILED, InstancePhase.LOST):
                row.phase, row.health = InstancePhase.LOST, Health.MISSING
                row.health_reason = "its runtime object disappeared"
                row.runtime_id = ""
                row.save(update_fields=["phase", "health", "health_reason", "runtime_id",
                                        "updated_at"])
                self.op.event("Lost", f"{name} disappeared from "
                               f"{self.targets.get(row.target_id, self.d.target).name}; "
                               "re-creating it", instance=name, warning=True)
        return list(rows.values())

    def _apply_observation(self, row: Instance, item: ObservedInstance) -> None:
        row.runtime_id = item.runtime_id
        row.address = item.address
        row.host = item.host
        row.started_at = item.started_at or row.started_at
        if item.phase in ("exited", "failed"):
            row.exit_code = item.exit_code
            if row.phase != InstancePhase.FAILED:
                row.phase = InstancePhase.EXITED
        elif item.phase == "running":
            if row.phase not in (InstancePhase.RUNNING, InstancePhase.STARTING):
                row.phase = InstancePhase.STARTING
            row.exit_code = None
        else:
            row.phase = InstancePhase.STARTING if item.phase == "starting" else row.phase
        row.save(update_fields=["runtime_id", "address", "host", "started_at", "exit_code",
                                "phase", "updated_at"])

    # Converge ---------------------------------------------------------------------
    def _converge(self, rows: list[Instance], observed) -> list[Instance]:
        d = self.d
        desired = d.replicas
        current = [r for r in rows if r.version_id == d.version_id]
        old = [r for r in rows if r.version_id != d.version_id]
        if old:
            if d.rollout_strategy == "recreate":
                rows = self._remove(rows, old, f"replaced by v{d.version.number}")
            else:
                ready_new = sum(1 for r in current if r.health == Health.HEALTHY)
                keep = max(0, desired - ready_new)
                doomed = sorted(old, key=_removal_order)[: max(0, len(old) - keep)]
                rows = self._remove(rows, doomed, f"replaced by v{d.version.number}")
            current = [r for r in rows if r.version_id == d.version_id]
        if len(current) > desired:
            doomed = sorted(current, key=_removal_order)[: len(current) - desired]
            rows = self._remove(rows, doomed, f"scaled down to {desired}")
        elif len(current) < desired:
            rows = rows + self._create_rows(desired - len(current), rows)
        self._ensure_all([r for r in rows if r.version_id == d.version_id or r in old])
        return rows

    def _create_rows(self, count: int, rows: list[Instance]) -> list[Instance]:
        """Write-ahead: commit rows (name, host, port) before creating objects."""
        placed = {tid: 0 for tid in self.drivers if tid not in self.unreachable}
        if not placed:
            return []
        for row in rows:
            if row.target_id in placed:
                placed[row.target_id] += 1
        load = dict(Instance.objects.filter(target_id__in=list(placed)).values("target_id")
                    .annotate(n=Count("pk")).values_list("target_id", "n"))
        new_rows = []
        needs_port = bool(self.d.version.port) and self.primary.allocate_ports()
        taken: set[int] = set()
        for _ in range(count):
            target_id = min(placed, key=lambda t: (placed[t], load.get(t, 0),
                                                   self.targets[t].name))
            placed[target_id] += 1
            row = self._new_row(target_id, needs_port, taken)
            new_rows.append(row)
        self.op.event("Scaled", f"creating {count} instance(s) to reach {self.d.replicas} "
                       f"replica(s): {', '.join(r.name for r in new_rows)}")
        return new_rows

    def _new_row(self, target_id: int, needs_port: bool, taken: set[int]) -> Instance:
        for _attempt in range(50):
            port = self._free_port(taken) if needs_port else None
            row = Instance(deployment=self.d, target_id=target_id, version=self.d.version,
                           generation=self.d.generation, port=port,
                           name=f"{self.d.agent.slug[:40]}-{secrets.token_hex(3)}",
                           phase=InstancePhase.PENDING, health=Health.PROGRESSING,
                           health_reason="waiting to be created")
            try:
                with transaction.atomic():
                    row.save()
                return row
            except IntegrityError:
                if port:
                    taken.add(port)
        raise RuntimeFailure("could not allocate a port for a new instance")

    @staticmethod
    def _free_port(taken: set[int]) -> int:
        used = set(Instance.objects.filter(port__isnull=False).values_list("port", flat=True))
        low, high = settings.HANGAR_PORT_RANGE
        for port in range(low, high):
            if port not in used and port not in taken and _bindable(port):
                taken.add(port)
                return port
        raise RuntimeFailure("no free port left in HANGAR_PORT_RANGE")

    def _ensure_all(self, rows: list[Instance]) -> None:
        todo = []
        for row in rows:
            if row.target_id in self.unreachable:
                continue
            if row.phase in (InstancePhase.PENDING, InstancePhase.LOST):
                todo.append(row)
            elif row.phase == InstancePhase.EXITED and self._restart_due(row):
                todo.append(row)
        if not todo:
            return
        specs = {}
        for row in todo:
            try:
                specs[row.pk] = instance_spec(self.d, row)
            except RuntimeFailure as exc:
                self._failed(row, str(exc))
        work = [r for r in todo if r.pk in specs]

        def ensure(row: Instance):
            try:
                return row, self.drivers[row.target_id].ensure_instance(specs[row.pk]), None
            except RuntimeFailure as exc:
                return row, None, exc

        with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
            results = list(pool.map(ensure, work))
        for row, item, error in results:
            restarting = row.phase == InstancePhase.EXITED
            if error is not None:
                if error.permanent:
                    self._failed(row, str(error))
                else:
                    row.health, row.health_reason = Health.PROGRESSING, f"retrying: {error}"
                    row.save(update_fields=["health", "health_reason", "updated_at"])
                    self.op.event("Retrying", f"{row.name}: {error}", instance=row.name,
                                   warning=True)
                    self.op.requeue(5)
                continue
            if restarting:
                row.restarts += 1
                row.restart_attempts += 1
                row.next_restart_at = None
                self.op.event("Restarted", f"{row.name} restarted (restart {row.restarts})",
                               instance=row.name)
            elif row.phase == InstancePhase.LOST:
                row.restarts += 1
                self.op.event("Recreated", f"{row.name} re-created on {item.host}",
                               instance=row.name)
            else:
                self.op.event("Created", f"{row.name} started on {item.host}"
                               + (f" at {item.address}" if item.address else ""),
                               instance=row.name)
            row.phase = InstancePhase.STARTING
            row.ready_at = None
            self._apply_observation(row, item)
            row.save(update_fields=["restarts", "restart_attempts", "next_restart_at",
                                    "ready_at", "updated_at"])

    def _restart_due(self, row: Instance) -> bool:
        """Nomad-like restart budget: N attempts per interval with exponential delay."""
        now = self.op.now
        policy = {**settings.HANGAR_RESTART_POLICY,
                  **((row.version or self.d.version).health or {}).get("restart", {})}
        if row.next_restart_at is not None:
            if row.next_restart_at <= now:
                return True
            self.op.requeue((row.next_restart_at - now).total_seconds() + 0.2)
            return False
        if row.interval_started_at is None or \
                now - row.interval_started_at > timedelta(seconds=policy["interval_s"]):
            row.interval_started_at, row.restart_attempts = now, 0
        code = row.exit_code
        why = f"exited with code {code}" + (" (killed)" if code in (137, -9) else "")
        if row.restart_attempts >= policy["attempts"]:
            self._failed(row, f"{why}; restarted {row.restart_attempts} time(s) in "
                         f"{policy['interval_s']}s, giving up")
            return False
        delay = min(policy["delay_s"] * (2 ** row.restart_attempts), policy["max_delay_s"])
        row.next_restart_at = now + timedelta(seconds=delay)
        row.health, row.health_reason = Health.DEGRADED, f"{why}; restarting in {delay:g}s"
        row.save(update_fields=["interval_started_at", "restart_attempts", "next_restart_at",
                                "health", "health_reason", "updated_at"])
        self.op.event("Exited", f"{row.name} {why}; restarting in {delay:g}s",
                       instance=row.name, warning=True)
        self.op.requeue(delay + 0.2)
        return False

    def _failed(self, row: Instance, reason: str) -> None:
        row.phase, row.health, row.health_reason = InstancePhase.FAILED, Health.DEGRADED, reason
        row.next_restart_at = None
        row.save(update_fields=["phase", "health", "health_reason", "next_restart_at",
                                "updated_at"])
        self.op.event("Failed", f"{row.name}: {reason}", instance=row.name, warning=True)

    def _remove(self, rows: list[Instance], doomed: list[Instance], why: str) -> list[Instance]:
        gone = set()
        for row in doomed:
            driver = self.drivers.get(row.target_id)
            if driver is None or row.target_id in self.unreachable:
                continue
            try:
                driver.remove_instance(self.d.pk, row.name)
            except RuntimeFailure as exc:
                self.op.event("Retrying", f"removing {row.name}: {exc}", instance=row.name,
                               warning=True)
                continue
            row.delete()
            gone.add(row.name)
            self.op.event("Removed", f"{row.name} removed: {why}", instance=row.name)
        return [r for r in rows if r.name not in gone]

    # Probe, autoscale, roll up ----------------------------------------------------
    def _probe(self, rows: list[Instance], observed) -> list[Instance]:
        live = [r for r in rows if r.phase in (InstancePhase.STARTING, InstancePhase.RUNNING)
                and r.target_id not in self.unreachable]
        want_usage = self.d.autoscale_signal == "cpu" or (
            self.d.health == Health.HEALTHY and self._sample_due())

        def probe(row: Instance):
            driver = self.drivers[row.target_id]
            item = observed.get(row.name, (None, None))[1] or ObservedInstance(
                name=row.name, runtime_id=row.runtime_id, generation=row.generation,
                phase="running", address=row.address)
            result = driver.probe(item, health_check(row.version or self.d.version))
            usage = None
            if want_usage:
                try:
                    usage = driver.usage(self.d.pk, row.name)
                except RuntimeFailure:
                    usage = None
            return row, item, result, usage

        with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
            results = list(pool.map(probe, live))
        now = self.op.now
        for row, item, result, usage in results:
            self._judge(row, item, result, now)
            if usage is not None:
                row.cpu_percent, row.memory_bytes = usage.cpu_percent, usage.memory_bytes
            row.save(update_fields=["phase", "health", "health_reason", "ready_at", "inflight",
                                    "cpu_percent", "memory_bytes", "updated_at"])
        for row in rows:
            if row.target_id in self.unreachable and row.health != Health.UNKNOWN:
                row.health, row.health_reason = Health.UNKNOWN, self.unreachable[row.target_id]
                row.save(update_fields=["health", "health_reason", "updated_at"])
        return rows

    def _judge(self, row: Instance, item: ObservedInstance, result: Probe, now) -> None:
        version = row.version or self.d.version
        check = health_check(version)
        deadline = check.progress_deadline_s if check else settings.HANGAR_PROGRESS_DEADLINE_S
        age = (now - row.started_at).total_seconds() if row.started_at else 0
        row.inflight = result.inflight
        was = row.health
        if item.runtime_health == "unhealthy":
            row.health, row.health_reason = Health.DEGRADED, "container HEALTHCHECK unhealthy"
        elif result.ready:
            row.phase, row.health, row.health_reason = InstancePhase.RUNNING, Health.HEALTHY, ""
            if row.ready_at is None:
                row.ready_at = now
        elif age > deadline:
            row.health, row.health_reason = Health.DEGRADED, \
                f"{result.reason} (not ready after {int(age)}s)"
        else:
            row.health, row.health_reason = Health.PROGRESSING, f"starting: {result.reason}"
            self.op.requeue(1)
        if row.health != was and row.health in (Health.HEALTHY, Health.DEGRADED):
            self.op.event("Ready" if row.health == Health.HEALTHY else "Unhealthy",
                           f"{row.name}: {row.health_reason or 'ready'}", instance=row.name,
                           warning=row.health == Health.DEGRADED)

    def _autoscale(self, rows: list[Instance]) -> None:
        from . import actions
        from .audit import Actor

        d = self.d
        if not d.autoscale_signal or d.state != DeploymentState.ACTIVE:
            return
        ready = [r for r in rows if r.health == Health.HEALTHY]
        if d.autoscale_signal == "cpu":
            values = [r.cpu_percent / float((r.version or d.version).cpu) for r in ready
                      if r.cpu_percent is not None]
        elif d.autoscale_signal == "inflight":
            values = [r.inflight for r in ready if r.inflight is not None]
        else:
            return  # "lag" is measured by the stream pattern
        if not values or not d.autoscale_target:
            return
        metric = sum(values) / len(values)
        ratio = metric / d.autoscale_target
        recommendation = len(ready) if abs(ratio - 1) <= 0.1 else math.ceil(len(ready) * ratio)
        recommendation = max(d.autoscale_min or 0, min(d.autoscale_max or 1000, recommendation))
        window = settings.HANGAR_AUTOSCALE_DOWN_WINDOW_S
        now = self.op.now.timestamp()
        history = [(t, r) for t, r in d.autoscale_state.get("recommendations", [])
                   if now - t <= window] + [(now, recommendation)]
        desired = d.replicas
        if recommendation > d.replicas:
            desired = recommendation
        elif recommendation < d.replicas:
            desired = max(r for _, r in history)  # stabilization window, HPA-style
        Deployment.objects.filter(pk=d.pk).update(
            autoscale_state={"recommendations": history[-200:], "metric": metric})
        if desired != d.replicas:
            message = (f"{d.replicas}→{desired}: {d.get_autoscale_signal_display()} "
                       f"{metric:.1f} per replica, target {d.autoscale_target:g}")
            actions.update_deployment(d, replicas=desired,
                                      actor=Actor(user=None, source="autoscaler"))
            self.op.event("Autoscaled", message)
            self.op.requeue(1)

    def _rollup(self, rows: list[Instance]) -> str:
        d = self.d
        rows = [r for r in rows if r.pk is not None]
        healthy = [r for r in rows if r.health == Health.HEALTHY
                   and r.version_id == d.version_id]
        total = d.replicas if d.state == DeploymentState.ACTIVE else 0
        if d.state == DeploymentState.PAUSED:
            return self._write_health(Health.SUSPENDED,
                                      f"paused; {len(rows)} instance(s) left as they are")
        if self.unreachable and len(self.unreachable) == len(self.targets):
            return self._write_health(
                Health.UNKNOWN, "cannot reach " + "; ".join(
                    f"{self.targets[t].name}: {m}" for t, m in self.unreachable.items()))
        if d.state == DeploymentState.STOPPED:
            if rows:
                self.op.requeue(2)
                return self._write_health(Health.PROGRESSING,
                                          f"stopping: {len(rows)} instance(s) left")
            return self._write_health(Health.SUSPENDED, "stopped", converged=True)
        bad = [r for r in rows if r.health in (Health.DEGRADED, Health.MISSING, Health.UNKNOWN)]
        summary = f"{len(healthy)} of {total} replicas healthy"
        if bad:
            worst = worst_health(r.health for r in bad)
            details = "; ".join(f"{r.name} {r.health_reason or r.health.lower()}"
                                for r in bad[:3])
            return self._write_health(
                Health.DEGRADED if worst == Health.DEGRADED else worst, f"{summary}; {details}")
        converged = len(healthy) == total == len(rows)
        if converged:
            return self._write_health(Health.HEALTHY,
                                      summary if total else "scaled to zero", converged=True)
        starting = [r for r in rows if r.health != Health.HEALTHY]
        extra = f"; {len(starting)} starting" if starting else ""
        if len(rows) > total:
            extra += f"; {len(rows) - total} to remove"
        self.op.requeue(1)
        return self._write_health(Health.PROGRESSING, summary + extra)

    def _sample_due(self) -> bool:
        last = DeploymentSample.objects.filter(deployment=self.d).order_by("-at").values_list(
            "at", flat=True).first()
        return last is None or (self.op.now - last).total_seconds() >= SAMPLE_EVERY_S

    def _sample(self) -> None:
        """At most one chart point per SAMPLE_EVERY_S per deployment."""
        d = self.d
        if not self._sample_due():
            return
        rows = list(Instance.objects.filter(deployment=d))

        def total(field):
            values = [getattr(r, field) for r in rows if getattr(r, field) is not None]
            return sum(values) if values else None
        DeploymentSample.objects.create(
            deployment=d, desired=d.replicas if d.state == DeploymentState.ACTIVE else 0,
            ready=sum(1 for r in rows if r.health == Health.HEALTHY),
            cpu_percent=total("cpu_percent"), memory_bytes=total("memory_bytes"),
            inflight=total("inflight"))
        events.publish(d.agent.team_id, "sample", {}, deployment_id=d.pk)  # charts, CPU, memory

    def _write_health(self, health: str, reason: str, *, converged: bool = False) -> str:
        d = self.d
        self._sample()
        fields = {"health": health, "health_reason": reason[:500],
                  "reconciled_at": timezone.now()}
        if converged:
            fields["observed_generation"] = d.generation
        changed = (d.health, d.health_reason) != (health, reason[:500])
        # Only write observed_generation for the generation we read (compare-and-set).
        Deployment.objects.filter(pk=d.pk, generation=d.generation).update(**fields)
        if changed:
            if d.health != health:
                self.op.event("Health", f"{d.health} → {health}: {reason}",
                               warning=health in (Health.DEGRADED, Health.MISSING))
            events.publish(d.agent.team_id, "deployment.health", {
                "health": health, "reason": reason, "replicas": d.replicas},
                deployment_id=d.pk)
        return health


def _removal_order(row: Instance):
    """Remove broken instances first, then the newest."""
    rank = {Health.DEGRADED: 0, Health.MISSING: 0, Health.UNKNOWN: 1, Health.PROGRESSING: 2}
    return (rank.get(row.health, 3), -(row.created_at.timestamp()))


class ManagedReconciler:
    """For drivers that manage replicas themselves (Kubernetes): apply the whole
    deployment, then mirror the pods into Instance rows."""

    def __init__(self, outer: Reconciler):
        self.outer = outer
        self.d = outer.d
        self.driver = outer.primary

    def spec(self) -> DeploymentSpec:
        d = self.d
        version = d.version
        template = InstanceSpec(
            deployment_id=d.pk, name=f"{d.agent.slug}-{d.environment}"[:50],
            generation=d.generation, team=d.agent.team.slug, agent=d.agent.slug,
            pattern=d.agent.pattern, image=version.image, command=tuple(version.command or ()),
            env={k: v for k, v in instance_env(d, version, "$(POD_NAME)").items()},
            cpu=float(version.cpu), memory_mb=version.memory_mb, port=version.port,
            health=health_check(version), version=str(version.number))
        # Secret values (team secrets, the ingest token) go to a Secret object,
        # never into the Deployment's pod template.
        secret_names = set(version.secret_refs or ()) | {"OTEL_EXPORTER_OTLP_HEADERS"}
        secret_env = {k: v for k, v in template.env.items() if k in secret_names}
        template = InstanceSpec(**{**template.__dict__, "env": {
            k: v for k, v in template.env.items() if k not in secret_env}})
        autoscale = None
        if d.autoscale_signal and d.autoscale_target:
            autoscale = Autoscale(min_replicas=d.autoscale_min or 1,
                                  max_replicas=d.autoscale_max or d.replicas,
                                  signal=d.autoscale_signal, target=d.autoscale_target)
        settings_ = version.pattern_settings or {}
        return DeploymentSpec(
            deployment_id=d.pk, name=f"{d.agent.slug}-{d.environment}-{d.pk}"[:63],
            generation=d.generation, replicas=d.replicas, template=template,
            secret_env=secret_env, autoscale=autoscale,
            schedule=settings_.get("schedule") if d.agent.pattern == "batch" else None,
            timezone=settings_.get("timezone"),
            concurrency_policy=str(settings_.get("concurrency_policy", "forbid")).capitalize(),
            timeout_s=settings_.get("timeout_s"), retries=int(settings_.get("retries", 0)))

    def run(self) -> str:
        d, run = self.d, self.outer.op
        try:
            if d.state == DeploymentState.STOPPED:
                self.driver.delete_deployment(d.pk)
            elif d.state == DeploymentState.ACTIVE:
                self.driver.apply_deployment(self.spec())
            pods = self.driver.list_instances(d.pk)
        except RuntimeFailure as exc:
            run.event("Failed" if exc.permanent else "Retrying", str(exc), warning=True)
            if not exc.permanent:
                run.requeue(5)
            return self.outer._write_health(
                Health.DEGRADED if exc.permanent else Health.UNKNOWN, str(exc))
        versions = {str(v.number): v for v in d.agent.versions.all()}
        rows = {r.name: r for r in Instance.objects.filter(deployment=d)}
        for pod in pods:
            row = rows.pop(pod.name, None) or Instance(deployment=d, name=pod.name,
                                                       target=d.target)
            row.runtime_id, row.host, row.address = pod.runtime_id, pod.host, pod.address
            row.version = versions.get(pod.version, row.version)
            row.generation, row.restarts, row.started_at = pod.generation, pod.restarts, \
                pod.started_at
            row.phase = pod.phase
            if pod.runtime_health == "healthy":
                row.health, row.health_reason = Health.HEALTHY, ""
            elif pod.message and any(word in pod.message for word in
                                     ("BackOff", "Err", "Invalid", "OOM")):
                row.health, row.health_reason = Health.DEGRADED, pod.message
            elif pod.phase == "failed":
                row.health, row.health_reason = Health.DEGRADED, pod.message or "pod failed"
            else:
                row.health, row.health_reason = Health.PROGRESSING, pod.message or "starting"
            is_new = row.pk is None
            row.save()
            if is_new:
                run.event("Created", f"pod {pod.name} observed on {pod.host or 'the cluster'}",
                          instance=pod.name)
        for row in rows.values():
            run.event("Removed", f"pod {row.name} is gone", instance=row.name)
            row.delete()
        return self.outer._rollup(list(Instance.objects.filter(deployment=d)
                                       .select_related("version")))


# Deletion and garbage collection --------------------------------------------------------


def teardown(deployment_id: int, target_ids: list[int]) -> int:
    """Remove every runtime object of a deleted deployment; returns how many."""
    removed = 0
    for target in Target.objects.filter(pk__in=target_ids):
        driver = get_driver(target)
        if driver.features.manages_replicas:
            driver.delete_deployment(deployment_id)
            continue
        for item in driver.list_instances(deployment_id):
            driver.remove_instance(deployment_id, item.name)
            removed += 1
    return removed


def collect_orphans() -> dict[str, int]:
    """Remove runtime objects labelled for deployments that no longer exist."""
    existing = set(Deployment.objects.values_list("pk", flat=True))
    removed: dict[str, int] = {}
    for target in Target.objects.exclude(kind__in=["edge", "kubernetes"]):
        try:
            driver = get_driver(target)
            orphans = driver.managed_deployment_ids() - existing
            for deployment_id in orphans:
                removed[target.name] = removed.get(target.name, 0) + teardown(
                    deployment_id, [target.pk])
        except (RuntimeFailure, AttributeError, NotImplementedError):
            continue
    return removed


def probe_targets() -> None:
    for target in Target.objects.all():
        try:
            get_driver(target).ping()
            status, reason = "ok", ""
        except RuntimeFailure as exc:
            status, reason = "unreachable", str(exc)[:500]
        Target.objects.filter(pk=target.pk).update(status=status, status_reason=reason,
                                                   last_probe_at=timezone.now())

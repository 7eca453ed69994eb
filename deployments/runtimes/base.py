"""The runtime contract: the one error type, the plain data a driver takes and
returns, the ``Runtime`` base class and its ``Features`` flags.

Connection settings per kind are in ``connections``, the drivers by kind in
``registry``."""
from __future__ import annotations

import secrets
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime


class RuntimeFailure(Exception):
    """The one error type that leaves a driver.

    ``permanent`` means retrying will not help (bad image, invalid spec);
    otherwise the reconciler retries with backoff.
    """

    def __init__(self, message: str, *, permanent: bool = False):
        super().__init__(message)
        self.permanent = permanent


LABEL_DEPLOYMENT = "hangar.deployment"
LABEL_INSTANCE = "hangar.instance"
LABEL_GENERATION = "hangar.generation"
LABEL_TEAM = "hangar.team"
LABEL_AGENT = "hangar.agent"
LABEL_MANAGED = "hangar.managed"
LABEL_VERSION = "hangar.version"
LABEL_PORT = "hangar.port"
LABEL_JOB = "hangar.job"  # "true" on a batch job's unit: never listed as an instance
LABEL_REVISION = "hangar.revision"  # the Revision number a managed unit runs


def managed_value() -> str:
    """``hangar.managed`` on what this installation makes: ``true``, or its name
    (HANGAR_INSTALLATION: installations sharing a host never touch each other's)."""
    from django.conf import settings

    return settings.HANGAR_INSTALLATION or "true"


def unit_prefix() -> str:
    from django.conf import settings

    name = settings.HANGAR_INSTALLATION
    return f"hangar-{name}" if name else "hangar"


@dataclass(frozen=True)
class HealthCheck:
    """How to decide an instance is live and ready (HTTP on the instance port)."""

    path: str = "/healthz"
    ready_path: str = "/readyz"
    timeout_s: float = 2.0
    # An instance not ready this long after starting is Degraded.
    progress_deadline_s: float = 60.0


@dataclass(frozen=True)
class InstanceSpec:
    """Everything a driver needs to create one instance. Plain data only."""

    deployment_id: int
    name: str  # unique per deployment, stable: also the runtime object's name suffix
    generation: int
    team: str
    agent: str
    pattern: str
    image: str = ""
    bundle: str = ""
    command: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)  # secrets already resolved
    cpu: float = 0.5
    memory_mb: int = 256
    port: int | None = None  # the port the agent listens on ($PORT); allocated per replica
    health: HealthCheck | None = None
    version: str = ""  # the AgentVersion number; a different one means "replace me"

    def labels(self) -> dict[str, str]:
        labels = {
            LABEL_MANAGED: managed_value(),
            LABEL_DEPLOYMENT: str(self.deployment_id),
            LABEL_INSTANCE: self.name,
            LABEL_GENERATION: str(self.generation),
            LABEL_TEAM: self.team,
            LABEL_AGENT: self.agent,
        }
        if self.version:
            labels[LABEL_VERSION] = self.version
        return labels


@dataclass(frozen=True)
class Autoscale:
    min_replicas: int
    max_replicas: int
    signal: str  # "cpu" (percent of requested cpu) | "inflight" | "lag"
    target: float


@dataclass(frozen=True)
class LagScaling:
    """Scaling on a stream's lag done by the runtime itself (KEDA on
    Kubernetes), with the thresholds Hangar's own lag autoscaler uses.

    ``kind`` is the stream source's (``redis``, ``nats``); ``address`` is where
    the runtime's scaler reads the lag (Redis ``host:port``, or the NATS HTTP
    monitoring endpoint); ``username`` and ``password`` are secret (they go to
    the deployment's Secret object, never into a manifest)."""

    kind: str
    stream: str
    group: str  # the Redis consumer group, or the NATS durable consumer
    address: str
    min_replicas: int
    max_replicas: int
    target: int  # lag per replica
    activation: int  # 0 -> 1 when the lag is strictly greater
    cooldown_s: int  # idle this long -> min (0 when allowed)
    stabilization_s: int  # scale-down window
    polling_s: int
    database: int = 0
    tls: bool = False
    account: str = ""  # NATS account
    username: str = ""
    password: str = ""


@dataclass(frozen=True)
class ScaledReplicas:
    """What a target's own autoscaler decided: ``by`` names it (``KEDA``)."""

    replicas: int
    by: str


@dataclass(frozen=True)
class Track:
    """The revision (number) a rollout keeps beside the current one: the stable."""
    revision: str
    replicas: int
    template: InstanceSpec
    secret_env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RolloutSplit:
    """A rollout in charge of a managed deployment: the spec's template and
    replicas are the new revision's, ``stable`` runs beside it; ``active``: the
    revision a Service selects (None: all), ``preview``: a preview Service's."""
    stable: Track
    active: str | None = None
    preview: str | None = None


@dataclass(frozen=True)
class DeploymentSpec:
    """Whole-deployment desired state, for drivers that manage replicas
    themselves (``features.manages_replicas``, e.g. Kubernetes)."""

    deployment_id: int
    name: str  # DNS-1123 safe, e.g. "support-bot-production-12"
    generation: int
    replicas: int
    template: InstanceSpec  # name/port are the template's; env holds non-secret values
    secret_env: dict[str, str] = field(default_factory=dict)  # -> a Secret
    config: dict[str, str] = field(default_factory=dict)  # -> a ConfigMap
    autoscale: Autoscale | None = None  # -> a HorizontalPodAutoscaler
    lag_scaling: LagScaling | None = None  # -> a KEDA ScaledObject
    restarted_at: str = ""  # ISO time of the last restart: new pods from then on
    schedule: str | None = None  # batch: cron -> CronJob
    timezone: str | None = None
    concurrency_policy: str = "Forbid"  # Allow | Forbid | Replace
    timeout_s: int | None = None
    retries: int = 0
    revision: str = ""  # the Revision number the template runs (a label on the pods)
    rollout: RolloutSplit | None = None  # a canary or blue-green under way


@dataclass
class ObservedInstance:
    """What a driver reports about one runtime object it found by labels."""

    name: str
    runtime_id: str
    generation: int
    phase: str  # pending | starting | running | exited | failed | lost
    host: str = ""
    address: str = ""  # host:port where the agent answers, if any
    port: int | None = None
    exit_code: int | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    # Health as the runtime itself sees it (Docker HEALTHCHECK, pod conditions):
    # "healthy" | "unhealthy" | "starting" | "" (none).
    runtime_health: str = ""
    message: str = ""  # e.g. "OOMKilled", "ImagePullBackOff: ..."
    restarts: int = 0  # restarts done by the runtime itself (pods)
    version: str = ""  # from the hangar.version label
    revision: str = ""  # from the hangar.revision label (managed drivers)
    # The runtime reports a failure that waiting will not cure (an image pull
    # back-off, a crash loop, an invalid spec); the driver's judge() reads it.
    failing: bool = False


@dataclass(frozen=True)
class Judgement:
    """The runtime's own verdict on one instance, from what it observed:
    "healthy" (e.g. a Ready pod), "degraded" (a failing container, with the
    runtime's reason), "progressing", or "" (no opinion: probe it)."""

    health: str = ""
    reason: str = ""


@dataclass(frozen=True)
class ManagedNames:
    """Names for drivers that manage replicas (``features.manages_replicas``)."""

    deployment: str  # the whole deployment's objects
    template: str  # the instance template
    instance_env: str  # what HANGAR_INSTANCE is set to (the runtime expands it per replica)


@dataclass
class JobResult:
    exit_code: int
    logs: str
    started_at: datetime | None = None
    finished_at: datetime | None = None
    timed_out: bool = False


@dataclass
class JobState:
    """A batch job's unit (container, process, Job) as the runtime sees it now."""

    name: str
    phase: str  # "running" | "exited" (finished, exit_code set) | "pending" (not started yet)
    exit_code: int | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    message: str = ""


@dataclass
class Usage:
    cpu_percent: float  # of one core, summed over cores (200 = two full cores)
    memory_bytes: int


@dataclass
class Probe:
    """Result of probing an instance: ``live`` answers at all, ``ready`` serves."""

    live: bool
    ready: bool
    reason: str = ""
    inflight: float | None = None  # in-flight requests the agent reports, if any


class Runtime:
    """The contract every driver implements. One instance per Target row.

    Drivers raise only :class:`RuntimeFailure`; they return plain dataclasses
    and never leak SDK objects. Everything is found by labels, never by memory:
    a fresh driver object must see what a previous one created.
    """

    features = None  # a Features subclass instance

    def __init__(self, target):
        self.target = target
        self.connection = target.connection

    # Lifecycle --------------------------------------------------------------
    def ping(self) -> None:
        """Raise RuntimeFailure if the target cannot be reached."""
        raise NotImplementedError

    def ensure_instance(self, spec: InstanceSpec) -> ObservedInstance:
        """Create and start the instance if missing (idempotent by spec.name);
        start it again if it exists but stopped."""
        raise NotImplementedError

    def remove_instance(self, deployment_id: int, name: str) -> None:
        """Stop and delete; no error if already gone."""
        raise NotImplementedError

    def list_instances(self, deployment_id: int) -> list[ObservedInstance]:
        """Every runtime object labelled for this deployment on this target."""
        raise NotImplementedError

    # Work and observation ---------------------------------------------------
    def run_job(self, spec: InstanceSpec, *, timeout_s: float) -> JobResult:
        raise NotImplementedError

    # Batch jobs, supervised level-triggered (features.supports_jobs): a
    # worker starts a unit and returns; later passes list, read and remove it.
    def start_job(self, spec: InstanceSpec, *, timeout_s: float | None = None) -> JobState:
        """Start a run-to-completion unit named ``spec.name`` (labelled as a job,
        so ``list_instances`` never shows it) and return at once. Idempotent by
        name: a unit that exists already is left as it is and reported."""
        raise NotImplementedError

    def list_jobs(self, deployment_id: int) -> dict[str, JobState]:
        """Every job unit of the deployment here, running or finished, by name."""
        raise NotImplementedError

    def job_logs(self, deployment_id: int, name: str, *, tail: int = 200) -> str:
        """The last ``tail`` lines of a job's output (stdout and stderr)."""
        raise NotImplementedError

    def remove_job(self, deployment_id: int, name: str) -> None:
        """Kill the unit if it still runs and delete it; no error if gone."""
        raise NotImplementedError

    def logs(self, deployment_id: int, name: str, *, tail: int = 100,
             follow: bool = False) -> Iterator[str | None]:
        """The last ``tail`` lines; with ``follow``, then new lines until the
        caller stops iterating. A following driver may yield ``None`` while
        nothing is logged (an idle tick, about every second) so the caller can
        stop or send a heartbeat without waiting for the next line."""
        raise NotImplementedError

    def usage(self, deployment_id: int, name: str) -> Usage | None:
        return None

    def probe(self, observed: ObservedInstance, health: HealthCheck | None) -> Probe:
        """Default: HTTP GET health and readiness paths on the instance address."""
        return http_probe(observed.address, health)

    # Drivers that manage replicas themselves -------------------------------
    def apply_deployment(self, spec: DeploymentSpec) -> None:
        """Server-side apply the whole deployment (features.manages_replicas)."""
        raise NotImplementedError

    def delete_deployment(self, deployment_id: int) -> None:
        raise NotImplementedError

    # Knowledge only the driver has ------------------------------------------
    def judge(self, observed: ObservedInstance) -> Judgement:
        """Health as the runtime itself sees it. Default: a Docker-style
        HEALTHCHECK that says unhealthy is degraded; otherwise no opinion."""
        if observed.runtime_health == "unhealthy":
            return Judgement("degraded", "container HEALTHCHECK unhealthy")
        return Judgement()

    def instance_name(self, agent: str) -> str:
        """A new instance's name (unique per deployment, stable: the runtime
        object is named after it)."""
        return f"{agent[:40]}-{secrets.token_hex(3)}"

    def managed_names(self, *, deployment_id: int, agent: str, environment: str) -> ManagedNames:
        raise NotImplementedError

    def allocate_ports(self) -> bool:
        """Whether Hangar must pick a port per replica (host networking)."""
        return True

    def port_space(self) -> str:
        """Targets with the same port space share one set of ports (e.g. two
        Docker daemons on one machine, both on its loopback)."""
        return f"target:{self.target.pk}"

    def port_free(self, port: int) -> bool:
        """Whether nothing outside Hangar's records listens on ``port`` there."""
        return True

    def scaled_replicas(self, deployment_id: int, signal: str) -> ScaledReplicas | None:
        """The replica count this target's own autoscaler set for the
        deployment (see ``autoscales``), or None if it has set none."""
        return None

    def autoscales(self, signal: str) -> bool:
        """Whether this target scales a deployment on ``signal`` itself (an HPA,
        KEDA), given the policy in its ``DeploymentSpec``; if not, Hangar's own
        autoscaler decides and changes ``Deployment.replicas``."""
        return False

    def managed_deployment_ids(self) -> set[int]:
        """Ids of every deployment with objects on this target
        (``features.lists_orphans``)."""
        raise NotImplementedError


def loopback_port_free(address: str, port: int) -> bool:
    """For drivers whose instances listen on this machine: try to bind."""
    with socket.socket() as sock:
        try:
            sock.bind((address, port))
        except OSError:
            return False
    return True


def http_probe(address: str, health: HealthCheck | None) -> Probe:
    import json
    import urllib.error
    import urllib.request

    if not address or health is None:
        return Probe(live=True, ready=True, reason="no HTTP health check")

    def get(path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://{address}{path}",
                                        timeout=health.timeout_s) as response:
                return response.status, response.read(4096)
        except urllib.error.HTTPError as exc:
            return exc.code, b""
        except (OSError, ValueError) as exc:
            return 0, str(exc).encode()[:200]

    status, body = get(health.path)
    if status != 200:
        detail = f"HTTP {status}" if status else body.decode(errors="replace")
        return Probe(live=False, ready=False, reason=f"liveness {health.path}: {detail}")
    inflight = None
    try:
        inflight = float(json.loads(body or b"{}").get("inflight"))
    except (ValueError, TypeError, AttributeError):
        inflight = None
    ready_status, _ = get(health.ready_path)
    if ready_status != 200:
        return Probe(live=True, ready=False, inflight=inflight,
                     reason=f"failed readiness: {ready_status or 'no answer'}")
    return Probe(live=True, ready=True, inflight=inflight)


class Features:
    """Capability flags a driver declares (like Django's DatabaseFeatures)."""

    supports_log_follow = False
    supports_resource_usage = False
    supports_jobs = False
    supports_health_probe = False
    pushes_instances = True  # False for edge: devices pull desired state
    manages_replicas = False  # True: apply_deployment() instead of per-instance ensure
    lists_orphans = False  # managed_deployment_ids() finds objects of deleted deployments

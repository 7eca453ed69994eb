"""The Kubernetes runtime: server-side apply of whole deployments.

Kubernetes manages replicas itself (``features.manages_replicas``): the
reconciler calls :meth:`KubernetesRuntime.apply_deployment` with the whole
desired state, and reads pods back with :meth:`~KubernetesRuntime.list_instances`.
Objects are built by :mod:`.k8s_manifests` and found again by their labels.

Per-instance verbs: ``ensure_instance`` is refused (the Deployment creates
pods); ``remove_instance`` deletes one pod, which its ReplicaSet replaces
(the "kill one replica" button). Health comes from the kubelet's probes via
the pod's Ready condition, so :meth:`~KubernetesRuntime.probe` needs no
network path from the control plane to pod IPs.

Only :class:`RuntimeFailure` leaves this module; responses are read as plain
JSON (``_preload_content=False``), never as SDK model objects; the client
plumbing is :mod:`.k8s_api`.
"""
from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime

import pydantic
from kubernetes import client

from . import k8s_manifests, k8s_manifests_rollout, k8s_names
from .base import (
    LABEL_DEPLOYMENT,
    LABEL_INSTANCE,
    LABEL_JOB,
    DeploymentSpec,
    Features,
    HealthCheck,
    InstanceSpec,
    JobResult,
    JobState,
    Judgement,
    ManagedNames,
    ObservedInstance,
    Probe,
    Runtime,
    RuntimeFailure,
    ScaledReplicas,
)
from .connections import KubernetesConnection, error_text
from .k8s_api import NamespacedApi, translated
from .k8s_manifests import CONTAINER_NAME, Manifest
from .k8s_pods import _job_outcome, _time, observe_pod
from .kubernetes_rollout import RolloutMixin

logger = logging.getLogger(__name__)

# Exit code reported for a job stopped at its deadline (as timeout(1) does).
TIMEOUT_EXIT_CODE = 124

# What delete_deployment removes, controllers first; pods go with their owners.
DELETE_ORDER = (
    "CronJob", "HorizontalPodAutoscaler", "Service", "Deployment", "Job", "ConfigMap", "Secret",
)


class KubernetesFeatures(Features):
    manages_replicas = True
    supports_jobs = True
    supports_log_follow = True
    supports_health_probe = True  # the kubelet probes; see KubernetesRuntime.probe
    supports_resource_usage = False  # metrics.k8s.io is not read (yet)


class KubernetesRuntime(RolloutMixin, NamespacedApi, Runtime):
    """One Kubernetes namespace (the Target's), reached with a kubeconfig or a
    host and bearer token."""

    features = KubernetesFeatures()

    # run_job: seconds between reads of the Job, extra wait beyond timeout_s
    # for scheduling and image pulls, and how much of the log to keep.
    poll_interval: float = 1.0
    job_grace_s: float = 30.0
    job_log_limit_bytes: int = 1024 * 1024

    def __init__(self, target):
        super().__init__(target)
        try:
            self.settings = KubernetesConnection.model_validate(self.connection or {})
        except pydantic.ValidationError as exc:
            # Messages only: pydantic's "input" would echo a token.
            fields = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {error_text(e)}"
                               for e in exc.errors())
            raise RuntimeFailure(
                f"invalid Kubernetes connection settings: {fields}", permanent=True
            ) from None
        self.namespace = self.settings.namespace or "default"
        self._client: client.ApiClient | None = None
        self._client_lock = threading.Lock()

    @staticmethod
    def _belongs(pod: Manifest, deployment_id: int) -> bool:
        labels = (pod.get("metadata") or {}).get("labels") or {}
        return labels.get(LABEL_DEPLOYMENT) == k8s_names.label_value(str(deployment_id))

    # Lifecycle --------------------------------------------------------------
    def ping(self) -> None:
        """Reach the API, authenticate, and list pods in the namespace (what
        the driver needs most); ``/version`` alone would not check access."""
        self._json(
            "CoreV1Api", "list_namespaced_pod", self.namespace, limit=1,
            action=f"list pods in namespace {self.namespace}",
        )

    def allocate_ports(self) -> bool:
        return False  # every pod has its own IP; the template's port serves

    def managed_names(self, *, deployment_id: int, agent: str, environment: str) -> ManagedNames:
        """Object names (DNS-1123, at most 63 characters) and the pod's own
        name for HANGAR_INSTANCE: pods are named by their ReplicaSet, and the
        kubelet expands $(POD_NAME) (k8s_manifests.container defines it)."""
        return ManagedNames(deployment=f"{agent}-{environment}-{deployment_id}"[:63],
                            template=f"{agent}-{environment}"[:50],
                            instance_env="$(POD_NAME)")

    def judge(self, observed: ObservedInstance) -> Judgement:
        """A Ready pod is healthy; a failing container (back-off, bad image,
        OOM) or a failed pod is degraded; anything else is still starting."""
        if observed.runtime_health == "healthy":
            return Judgement("healthy")
        if observed.failing:
            return Judgement("degraded", observed.message)
        if observed.phase == "failed":
            return Judgement("degraded", observed.message or "pod failed")
        return Judgement("progressing", observed.message or "starting")

    def ensure_instance(self, spec: InstanceSpec) -> ObservedInstance:
        raise RuntimeFailure(
            "Kubernetes pods are managed by the Deployment; use apply_deployment",
            permanent=True,
        )

    def remove_instance(self, deployment_id: int, name: str) -> None:
        """Delete one pod of the deployment; its ReplicaSet starts a new one."""
        pod = self._read_pod(name)
        if pod is None or not self._belongs(pod, deployment_id):
            return
        self._delete("Pod", name)

    def list_instances(self, deployment_id: int) -> list[ObservedInstance]:
        pods = self._list("Pod", k8s_names.deployment_selector(deployment_id))
        pods = [p for p in pods if LABEL_JOB not in ((p.get("metadata") or {}).get("labels")
                                                     or {})]
        return sorted((observe_pod(pod) for pod in pods), key=lambda o: o.name)

    def autoscales(self, signal: str) -> bool:
        """CPU and in-flight requests: an HPA. Stream lag: KEDA's ScaledObject
        when the target says KEDA is installed (``keda``); otherwise Hangar's
        own lag autoscaler changes the Deployment's replicas."""
        if signal == "lag":
            return self.settings.keda
        return True

    def scaled_replicas(self, deployment_id: int, signal: str) -> ScaledReplicas | None:
        """The Deployment's replicas as the HPA or KEDA set them (Hangar
        applies none while they scale it)."""
        for item in self._list("Deployment", k8s_names.deployment_selector(deployment_id)):
            replicas = (item.get("spec") or {}).get("replicas")
            if isinstance(replicas, int):
                return ScaledReplicas(replicas=replicas, by="KEDA" if signal == "lag" and
                                      self.settings.keda else "HorizontalPodAutoscaler")
        return None

    def _kinds(self) -> tuple[str, ...]:
        """The kinds this target's deployments may have (KEDA's only with KEDA:
        a cluster without its CRDs has no such resources to ask about)."""
        return k8s_manifests.DEPLOYMENT_KINDS + (
            k8s_manifests.KEDA_KINDS if self.settings.keda else ())

    def apply_deployment(self, spec: DeploymentSpec) -> None:
        """Server-side apply every object the spec needs, then delete those it
        no longer needs (an HPA after autoscaling is switched off, a Service
        without a port, a Deployment replaced by a CronJob, …)."""
        if spec.lag_scaling is not None and not self.settings.keda:
            raise RuntimeFailure("lag scaling by KEDA asked of a target without KEDA",
                                 permanent=True)
        try:
            manifests = k8s_manifests.deployment_manifests(
                spec if spec.rollout is None else k8s_manifests_rollout.primary_spec(spec))
            manifests, doomed = self._manifests(spec, manifests)  # a rollout's objects
        except (ValueError, TypeError) as exc:
            raise RuntimeFailure(str(exc), permanent=True) from None
        for manifest in manifests:
            self._apply(manifest)
        names = k8s_names.object_names(spec)
        wanted = {manifest["kind"] for manifest in manifests
                  if manifest["metadata"]["name"] == names[manifest["kind"]]}
        for kind in self._kinds():
            if kind not in wanted:
                self._delete(kind, names[kind])
        self._delete_rollout_objects(doomed)

    def delete_deployment(self, deployment_id: int) -> None:
        selector = k8s_names.deployment_selector(deployment_id)
        kinds = (k8s_manifests.KEDA_KINDS[::-1] if self.settings.keda else ()) + DELETE_ORDER
        for kind in kinds:
            for item in self._list(kind, selector):
                self._delete(kind, item["metadata"]["name"])

    # Work and observation ---------------------------------------------------
    def run_job(self, spec: InstanceSpec, *, timeout_s: float) -> JobResult:
        """Run ``spec`` once as a Job and wait for it. The environment goes in
        a Secret of its own, not in the Job's spec; both are deleted after."""
        base = k8s_names.object_name(spec.name, limit=56)
        name = f"{base}-{secrets.token_hex(3)}"
        secret_name = f"{name}-env" if spec.env else None
        try:
            manifest = k8s_manifests.job(
                spec, name=name, timeout_s=timeout_s, secret_name=secret_name
            )
        except (ValueError, TypeError) as exc:
            raise RuntimeFailure(str(exc), permanent=True) from None
        created: list[tuple[str, str]] = []
        try:
            if secret_name:
                self._create(k8s_manifests.job_secret(spec, name=secret_name))
                created.append(("Secret", secret_name))
            self._create(manifest)
            created.append(("Job", name))
            return self._wait_for_job(name, timeout_s)
        finally:
            self._cleanup(reversed(created))

    def _cleanup(self, objects: Iterable[tuple[str, str]]) -> None:
        """Best-effort deletion; the objects are labelled, so delete_deployment
        finds anything left behind."""
        for kind, object_name in objects:
            try:
                self._delete(kind, object_name)
            except RuntimeFailure as failure:
                logger.warning("could not delete %s %s: %s", kind, object_name, failure)

    def _wait_for_job(self, name: str, timeout_s: float) -> JobResult:
        deadline = time.monotonic() + timeout_s + self.job_grace_s
        while True:
            job = self._json(
                "BatchV1Api", "read_namespaced_job", name, self.namespace,
                action=f"read Job {name}",
            ) or {}
            outcome, condition = _job_outcome(job)
            if outcome is not None or time.monotonic() >= deadline:
                break
            time.sleep(self.poll_interval)

        status = job.get("status") or {}
        pod = self._job_pod(name)
        observed = observe_pod(pod) if pod else None
        logs = self._job_logs(pod) if pod else ""
        timed_out = outcome in (None, "deadline")
        exit_code = observed.exit_code if observed else None
        if exit_code is None:
            exit_code = 0 if outcome == "complete" else TIMEOUT_EXIT_CODE if timed_out else 1
        if timed_out and observed and observed.message:
            logs += f"\n[hangar] the job did not finish in time; pod: {observed.message}\n"
        finished = _time(status.get("completionTime")) or _time(
            condition.get("lastTransitionTime"))
        return JobResult(
            exit_code=exit_code,
            logs=logs,
            started_at=_time(status.get("startTime")),
            finished_at=finished or (datetime.now(UTC) if timed_out else None),
            timed_out=timed_out,
        )

    def _job_pod(self, name: str) -> Manifest | None:
        """The Job's latest pod (the last attempt), if any."""
        pods = self._list("Pod", f"job-name={name}")
        if not pods:
            return None
        return max(pods, key=lambda p: (p.get("metadata") or {}).get("creationTimestamp") or "")

    def _job_logs(self, pod: Manifest) -> str:
        name = (pod.get("metadata") or {}).get("name") or ""
        try:
            raw = self._call(
                "CoreV1Api", "read_namespaced_pod_log", name, self.namespace,
                container=CONTAINER_NAME, limit_bytes=self.job_log_limit_bytes,
                action=f"read the log of Pod {name}",
            )
        except RuntimeFailure as failure:  # e.g. the container never started
            return f"[hangar] no log: {failure}\n"
        return (raw or b"").decode("utf-8", errors="replace")

    # Batch jobs (level-triggered): one Job per firing, made by Hangar's
    # scheduler (no CronJob). The Job's own deadline is a safety net past
    # Hangar's timeout; Hangar retries, so the Job does not (backoffLimit 0).
    job_ttl_s: int = 24 * 3600

    @staticmethod
    def _job_names(deployment_id: int, name: str) -> tuple[str, str]:
        job = k8s_names.object_name(f"hangar-{deployment_id}-{name}", limit=56)
        return job, f"{job}-env"

    def start_job(self, spec: InstanceSpec, *, timeout_s: float | None = None) -> JobState:
        job_name, secret_name = self._job_names(spec.deployment_id, spec.name)
        existing = self._json("BatchV1Api", "read_namespaced_job", job_name, self.namespace,
                              action=f"read Job {job_name}", missing_ok=True)
        if existing is not None:
            return self._job_state(existing)
        try:
            manifest = k8s_manifests.job(
                spec, name=job_name, secret_name=secret_name if spec.env else None,
                timeout_s=timeout_s + self.job_grace_s if timeout_s else None,
                ttl_s=self.job_ttl_s)
        except (ValueError, TypeError) as exc:
            raise RuntimeFailure(str(exc), permanent=True) from None
        if spec.env:
            secret = k8s_manifests.job_secret(spec, name=secret_name)
            secret["metadata"]["labels"][LABEL_JOB] = "true"
            self._apply(secret)  # idempotent: a retried start finds it
        self._create(manifest)
        return JobState(name=spec.name, phase="pending", started_at=datetime.now(UTC))

    def _job_state(self, job: Manifest) -> JobState:
        metadata = job.get("metadata") or {}
        name = ((metadata.get("labels") or {}).get(LABEL_INSTANCE)) or metadata.get("name", "")
        status = job.get("status") or {}
        outcome, condition = _job_outcome(job)
        started = _time(status.get("startTime"))
        if outcome is None:
            return JobState(name=name, phase="running" if status.get("active") or started
                            else "pending", started_at=started)
        pod = self._job_pod(metadata.get("name", ""))
        observed = observe_pod(pod) if pod else None
        exit_code = observed.exit_code if observed else None
        if exit_code is None:
            exit_code = 0 if outcome == "complete" else 1
        return JobState(name=name, phase="exited", exit_code=exit_code, started_at=started,
                        finished_at=_time(status.get("completionTime"))
                        or _time(condition.get("lastTransitionTime")),
                        message=(observed.message if observed else "") or
                        condition.get("message", ""))

    def list_jobs(self, deployment_id: int) -> dict[str, JobState]:
        selector = f"{k8s_names.deployment_selector(deployment_id)},{LABEL_JOB}=true"
        states = (self._job_state(job) for job in self._list("Job", selector))
        return {state.name: state for state in states}

    def job_logs(self, deployment_id: int, name: str, *, tail: int = 200) -> str:
        job_name, _ = self._job_names(deployment_id, name)
        pod = self._job_pod(job_name)
        if pod is None:
            return ""
        return "\n".join(self._log_lines((pod.get("metadata") or {}).get("name", ""),
                                          tail=tail, follow=False)) + "\n"

    def remove_job(self, deployment_id: int, name: str) -> None:
        job_name, secret_name = self._job_names(deployment_id, name)
        self._delete("Job", job_name)
        self._delete("Secret", secret_name)

    def logs(self, deployment_id: int, name: str, *, tail: int = 100,
             follow: bool = False) -> Iterator[str]:
        """Lines of the agent container's log; with ``follow``, until the
        caller stops iterating or the container ends."""
        pod = self._read_pod(name)
        if pod is None or not self._belongs(pod, deployment_id):
            raise RuntimeFailure(f"no pod {name} in this deployment", permanent=True)
        return self._log_lines(name, tail=tail, follow=follow)

    def _log_lines(self, name: str, *, tail: int, follow: bool) -> Iterator[str]:
        action = f"read the log of Pod {name}"
        api = client.CoreV1Api(self._api_client())
        with translated(action):
            response = api.read_namespaced_pod_log(
                name, self.namespace, container=CONTAINER_NAME, follow=follow,
                tail_lines=max(0, tail), _preload_content=False,
                _request_timeout=None if follow else self.request_timeout,
            )
        try:
            pending = b""
            with translated(action):
                for chunk in response.stream(8192, decode_content=True):
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        yield line.decode("utf-8", errors="replace")
            if pending:
                yield pending.decode("utf-8", errors="replace")
        finally:
            response.close()
            response.release_conn()

    def probe(self, observed: ObservedInstance, health: HealthCheck | None) -> Probe:
        """The kubelet runs the HTTP probes (see k8s_manifests.container); its
        verdict is the pod's Ready condition, which list_instances reads."""
        if observed.runtime_health == "healthy":
            return Probe(live=True, ready=True)
        if observed.phase != "running":
            return Probe(live=False, ready=False,
                         reason=observed.message or f"pod is {observed.phase}")
        if observed.runtime_health == "starting":
            return Probe(live=True, ready=False, reason="starting: startup probe not passed yet")
        if observed.message:  # e.g. CrashLoopBackOff: the container is not running
            return Probe(live=False, ready=False, reason=observed.message)
        return Probe(live=True, ready=False, reason="failed readiness (pod not Ready)")

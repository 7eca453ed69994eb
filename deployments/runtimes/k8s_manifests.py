"""Kubernetes manifests for Hangar deployments, as plain dicts.

Pure functions: a :class:`DeploymentSpec` (or, for one-off jobs, an
:class:`InstanceSpec`) in, JSON-ready dicts out. No client, no I/O, so the
output can be validated against the official schemas and shown to people.
Manifests carry no namespace: the driver adds the one from the Target.

Every object carries ``spec.template.labels()`` (made valid label values) so
that the driver finds everything by labels, never by memory. Names, labels
and selectors come from :mod:`.k8s_names` (re-exported here).
"""
from __future__ import annotations

import base64
import hashlib
import json
import math
from typing import Any

from .base import (
    LABEL_GENERATION,
    LABEL_JOB,
    LABEL_REVISION,
    Autoscale,
    DeploymentSpec,
    HealthCheck,
    InstanceSpec,
)
from .k8s_keda import (
    KEDA_KINDS,
    KEDA_SECRET_KEYS,
    scaled_object,
    trigger_authentication,
)
from .k8s_names import (
    LABEL_VALUE_MAX,
    NAME_MAX,
    deployment_selector,
    is_label_value,
    label_value,
    labels,
    object_name,
    object_names,
    selector_labels,
)

Manifest = dict[str, Any]

# The names (k8s_names) are re-exported: callers know them from here.
__all__ = [
    "CONTAINER_NAME", "DEPLOYMENT_KINDS", "ENV_CHECKSUM_ANNOTATION", "INFLIGHT_METRIC",
    "KEDA_KINDS", "KEDA_SECRET_KEYS", "LABEL_VALUE_MAX", "LAG_METRIC", "NAME_MAX", "PORT_NAME",
    "config_map", "container", "cron_job", "deployment", "deployment_manifests",
    "deployment_selector", "horizontal_pod_autoscaler", "is_label_value", "job", "job_secret",
    "label_value", "labels", "Manifest", "mebibytes", "millicores", "object_name",
    "object_names", "quantity", "RESTARTED_AT_ANNOTATION", "scaled_object", "secret",
    "selector_labels", "service", "trigger_authentication",
]

CONTAINER_NAME = "agent"
PORT_NAME = "http"
# Custom metrics the agents export (through a metrics adapter such as
# prometheus-adapter) for the "inflight" and "lag" autoscaling signals.
INFLIGHT_METRIC = "hangar_inflight_requests"
LAG_METRIC = "hangar_stream_lag"
# On the pod template: changes when the Secret or ConfigMap content changes,
# so that new values roll the pods (Kubernetes does not restart them itself).
ENV_CHECKSUM_ANNOTATION = "hangar.env-checksum"
# On the pod template: the deployment's last restart (the restart verb rolls the pods).
RESTARTED_AT_ANNOTATION = "hangar.restarted-at"

# Kinds the driver applies for a deployment, in apply order.
DEPLOYMENT_KINDS = (
    "Secret", "ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler", "CronJob",
)


def millicores(cpu: float) -> str:
    return f"{max(1, round(cpu * 1000))}m"


def mebibytes(memory_mb: int) -> str:
    return f"{max(1, int(memory_mb))}Mi"


def quantity(value: float) -> str:
    """A Kubernetes quantity for a metric target: whole numbers as they are,
    fractions in thousandths ('2.5' -> '2500m')."""
    if float(value).is_integer():
        return str(int(value))
    return f"{round(value * 1000)}m"


def _metadata(name: str, object_labels: dict[str, str]) -> Manifest:
    return {"name": name, "labels": dict(object_labels)}


def _probe(path: str, health: HealthCheck, *, period: int, failures: int) -> Manifest:
    return {
        "httpGet": {"path": path, "port": PORT_NAME, "scheme": "HTTP"},
        "periodSeconds": period,
        "timeoutSeconds": max(1, math.ceil(health.timeout_s)),
        "failureThreshold": failures,
    }


def container(
    template: InstanceSpec,
    *,
    env: dict[str, str],
    env_from: list[Manifest],
    probes: bool = True,
) -> Manifest:
    """The agent's container.

    ``template.command`` replaces the image's CMD and keeps its ENTRYPOINT, as
    ``docker run image command…`` does, so it becomes the container's ``args``.
    """
    if not template.image:
        raise ValueError("the Kubernetes runtime needs an image")
    values = dict(env)
    if template.port:
        values["PORT"] = str(template.port)
        # The reference agent binds to loopback unless told otherwise; in a pod
        # the kubelet's probes and the Service reach it on the pod IP.
        values.setdefault("AGENT_BIND", "0.0.0.0")
    spec: Manifest = {
        "name": CONTAINER_NAME,
        "image": template.image,
    }
    if template.command:
        spec["args"] = list(template.command)
    # POD_NAME comes first: later values may refer to it as $(POD_NAME), which
    # Kubernetes expands (the reconciler names instances that way).
    env_list: list[Manifest] = []
    if "POD_NAME" not in values:
        env_list.append(
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
        )
    env_list += [{"name": key, "value": values[key]} for key in sorted(values)]
    spec["env"] = env_list
    if env_from:
        spec["envFrom"] = env_from
    resources = {"cpu": millicores(template.cpu), "memory": mebibytes(template.memory_mb)}
    spec["resources"] = {"requests": dict(resources), "limits": dict(resources)}
    if template.port:
        spec["ports"] = [
            {"name": PORT_NAME, "containerPort": template.port, "protocol": "TCP"}
        ]
        health = template.health
        if probes and health is not None:
            # The startup probe gives a slow agent its progress deadline before
            # the liveness probe may restart it.
            period = 2
            spec["startupProbe"] = _probe(
                health.path, health, period=period,
                failures=max(1, math.ceil(health.progress_deadline_s / period)),
            )
            spec["livenessProbe"] = _probe(health.path, health, period=10, failures=3)
            spec["readinessProbe"] = _probe(health.ready_path, health, period=5, failures=2)
    return spec


def _env_from(secret_name: str | None, config_map_name: str | None) -> list[Manifest]:
    sources: list[Manifest] = []
    if config_map_name:
        sources.append({"configMapRef": {"name": config_map_name}})
    if secret_name:  # last, so that secret values win over config on a clash
        sources.append({"secretRef": {"name": secret_name}})
    return sources


def _pod_spec(containers: list[Manifest], *, restart_policy: str) -> Manifest:
    return {
        "containers": containers,
        "restartPolicy": restart_policy,
        # Agents do not talk to the Kubernetes API, nor need a variable per Service.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
    }


def _env_checksum(spec: DeploymentSpec) -> str:
    content = json.dumps([spec.secret_env, spec.config], sort_keys=True)
    return hashlib.sha256(content.encode()).hexdigest()


def _secret_values(spec: DeploymentSpec) -> dict[str, str]:
    """The secret environment and, for KEDA, the stream's credentials."""
    values = dict(spec.secret_env)
    scaling = spec.lag_scaling
    if scaling is not None:
        for parameter, key in KEDA_SECRET_KEYS.items():
            if getattr(scaling, parameter):
                values[key] = getattr(scaling, parameter)
    return values


def secret(spec: DeploymentSpec) -> Manifest:
    """The deployment's secret environment (v1 Secret, Opaque, base64 ``data``:
    ``stringData`` does not remove deleted keys under server-side apply)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(object_names(spec)["Secret"], labels(spec.template)),
        "type": "Opaque",
        "data": {
            key: base64.b64encode(value.encode()).decode("ascii")
            for key, value in sorted(_secret_values(spec).items())
        },
    }


def job_secret(template: InstanceSpec, *, name: str) -> Manifest:
    """The environment of a one-off job, kept out of the Job's spec."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(name, labels(template)),
        "type": "Opaque",
        "data": {
            key: base64.b64encode(value.encode()).decode("ascii")
            for key, value in sorted(template.env.items())
        },
    }


def config_map(spec: DeploymentSpec) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(object_names(spec)["ConfigMap"], labels(spec.template)),
        "data": dict(sorted(spec.config.items())),
    }


def _deployment_containers(spec: DeploymentSpec, *, probes: bool) -> list[Manifest]:
    names = object_names(spec)
    env_from = _env_from(
        names["Secret"] if _secret_values(spec) else None,
        names["ConfigMap"] if spec.config else None,
    )
    return [container(spec.template, env=spec.template.env, env_from=env_from, probes=probes)]


def _pod_template(spec: DeploymentSpec, *, probes: bool, restart_policy: str) -> Manifest:
    """The pods' template. It carries no ``hangar.generation``: every change
    bumps the generation, replicas too, and a changed template restarts every
    pod — scaling (by hand or on the lag) must not. What should roll the pods
    changes the template itself: the version label and the container, the env
    checksum, and the restart stamp (as ``kubectl rollout restart`` does)."""
    own = {k: v for k, v in labels(spec.template).items() if k != LABEL_GENERATION}
    if spec.revision:  # what a rollout's Services select on (k8s_manifests_rollout)
        own[LABEL_REVISION] = label_value(spec.revision)
    metadata: Manifest = {"labels": own}
    annotations: Manifest = {}
    if spec.secret_env or spec.config:
        annotations[ENV_CHECKSUM_ANNOTATION] = _env_checksum(spec)
    if spec.restarted_at:
        annotations[RESTARTED_AT_ANNOTATION] = spec.restarted_at
    if annotations:
        metadata["annotations"] = annotations
    return {
        "metadata": metadata,
        "spec": _pod_spec(
            _deployment_containers(spec, probes=probes), restart_policy=restart_policy
        ),
    }


def deployment(spec: DeploymentSpec) -> Manifest:
    """apps/v1 Deployment. With autoscaling the replica count is left to the
    HorizontalPodAutoscaler (or KEDA's ScaledObject): applying it would undo
    every scaling decision."""
    body: Manifest = {
        "selector": {"matchLabels": selector_labels(spec.template)},
        "template": _pod_template(spec, probes=True, restart_policy="Always"),
    }
    if spec.autoscale is None and spec.lag_scaling is None:
        body = {"replicas": max(0, spec.replicas), **body}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(object_names(spec)["Deployment"], labels(spec.template)),
        "spec": body,
    }


def service(spec: DeploymentSpec) -> Manifest:
    """v1 Service (ClusterIP) on the template's port; only with a port."""
    if not spec.template.port:
        raise ValueError("a Service needs the template's port")
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(object_names(spec)["Service"], labels(spec.template)),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(spec.template),
            "ports": [{
                "name": PORT_NAME,
                "port": spec.template.port,
                "targetPort": PORT_NAME,
                "protocol": "TCP",
            }],
        },
    }


def _metric(autoscale: Autoscale) -> Manifest:
    if autoscale.signal == "cpu":
        return {
            "type": "Resource",
            "resource": {
                "name": "cpu",
                "target": {
                    "type": "Utilization",
                    "averageUtilization": max(1, round(autoscale.target)),
                },
            },
        }
    metric = {"inflight": INFLIGHT_METRIC, "lag": LAG_METRIC}.get(autoscale.signal)
    if metric is None:
        raise ValueError(f"unknown autoscaling signal {autoscale.signal!r}")
    return {
        "type": "Pods",
        "pods": {
            "metric": {"name": metric},
            "target": {"type": "AverageValue", "averageValue": quantity(autoscale.target)},
        },
    }


def horizontal_pod_autoscaler(spec: DeploymentSpec) -> Manifest:
    """autoscaling/v2 HorizontalPodAutoscaler for ``spec.autoscale``. The
    minimum is at least 1: scaling to zero needs an alpha feature gate."""
    autoscale = spec.autoscale
    if autoscale is None:
        raise ValueError("no autoscaling in this spec")
    low = max(1, autoscale.min_replicas)
    names = object_names(spec)
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(names["HorizontalPodAutoscaler"], labels(spec.template)),
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "apps/v1", "kind": "Deployment", "name": names["Deployment"],
            },
            "minReplicas": low,
            "maxReplicas": max(low, autoscale.max_replicas),
            "metrics": [_metric(autoscale)],
        },
    }


def _job_spec(
    pod_template: Manifest, *, timeout_s: float | None, retries: int
) -> Manifest:
    body: Manifest = {"backoffLimit": max(0, int(retries)), "template": pod_template}
    if timeout_s:
        body["activeDeadlineSeconds"] = max(1, math.ceil(float(timeout_s)))
    return body


def cron_job(spec: DeploymentSpec) -> Manifest:
    """batch/v1 CronJob for a scheduled batch deployment."""
    if not spec.schedule:
        raise ValueError("a CronJob needs a schedule")
    own = labels(spec.template)
    body: Manifest = {
        "schedule": spec.schedule,
        "concurrencyPolicy": spec.concurrency_policy,
        "jobTemplate": {
            "metadata": {"labels": dict(own)},
            "spec": _job_spec(
                _pod_template(spec, probes=False, restart_policy="Never"),
                timeout_s=spec.timeout_s, retries=spec.retries,
            ),
        },
    }
    if spec.timezone:
        body["timeZone"] = spec.timezone
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": _metadata(object_names(spec)["CronJob"], own),
        "spec": body,
    }


def job(
    template: InstanceSpec,
    *,
    name: str,
    timeout_s: float | None,
    retries: int = 0,
    secret_name: str | None = None,
    ttl_s: int = 3600,
) -> Manifest:
    """batch/v1 Job for one run. The environment comes from ``secret_name``
    (see :func:`job_secret`) when given, else inline. ``ttl_s`` lets the
    cluster clean up a Job whose runner died before deleting it."""
    own = {**labels(template), LABEL_JOB: "true"}  # never listed as an instance
    env = {} if secret_name else template.env
    pod = {
        "metadata": {"labels": dict(own)},
        "spec": _pod_spec(
            [container(template, env=env, env_from=_env_from(secret_name, None), probes=False)],
            restart_policy="Never",
        ),
    }
    body = _job_spec(pod, timeout_s=timeout_s, retries=retries)
    body["ttlSecondsAfterFinished"] = ttl_s
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(name, own),
        "spec": body,
    }


def deployment_manifests(spec: DeploymentSpec) -> list[Manifest]:
    """Every object the deployment needs, in apply order: Secret and ConfigMap
    (when there are values) first, then a CronJob for a scheduled batch, or a
    Deployment with a Service (with a port) and an HPA (with autoscaling) or
    KEDA's ScaledObject (lag scaling), after its TriggerAuthentication."""
    manifests: list[Manifest] = []
    if _secret_values(spec):
        manifests.append(secret(spec))
    if spec.config:
        manifests.append(config_map(spec))
    if spec.schedule:
        manifests.append(cron_job(spec))
        return manifests
    manifests.append(deployment(spec))
    if spec.template.port:
        manifests.append(service(spec))
    if spec.autoscale is not None:
        manifests.append(horizontal_pod_autoscaler(spec))
    if spec.lag_scaling is not None:
        auth = trigger_authentication(spec)
        if auth is not None:
            manifests.append(auth)
        manifests.append(scaled_object(spec))
    return manifests

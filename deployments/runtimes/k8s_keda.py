"""KEDA objects for stream deployments on a cluster with KEDA, as plain dicts.

A ``ScaledObject`` scaling the Deployment on the stream's lag with Hangar's
own thresholds, and the ``TriggerAuthentication`` reading the stream's
credentials from the deployment's Secret. Pure functions, like
:mod:`.k8s_manifests`, which re-exports them.
"""
from __future__ import annotations

from typing import Any

from .base import DeploymentSpec, LagScaling
from .k8s_names import labels, object_names

Manifest = dict[str, Any]

# KEDA's kinds, applied after those on a target whose cluster has KEDA.
KEDA_KINDS = ("TriggerAuthentication", "ScaledObject")
# Keys of the deployment's Secret that KEDA's TriggerAuthentication reads.
KEDA_SECRET_KEYS = {"username": "KEDA_STREAM_USERNAME", "password": "KEDA_STREAM_PASSWORD"}
# The HPA's default scale-up limits (100 % or 4 pods per 15 s, whichever is
# more), written out: Hangar's own lag autoscaler uses the same.
SCALE_UP_PERIOD_S = 15
SCALE_UP_PERCENT = 100
SCALE_UP_PODS = 4
# What the HPA accepts as a stabilization window (autoscaling/v2).
STABILIZATION_MAX_S = 3600
# Failed lag readings in a row before KEDA's fallback holds the current replicas.
FALLBACK_FAILURES = 3


def _triggers(scaling: LagScaling, auth: str | None) -> tuple[list[Manifest], Manifest]:
    """KEDA triggers measuring the lag as Hangar does, and the advanced part.

    Redis: Hangar's lag is the group's undelivered entries (``XINFO GROUPS``
    lag) plus its pending ones (``XPENDING``); KEDA reads each with one trigger
    (``lagCount``, ``pendingEntriesCount``) and a scaling formula adds them.
    NATS: KEDA's ``nats-jetstream`` lag is already ``num_pending +
    num_ack_pending``."""
    target, activation = str(scaling.target), str(scaling.activation)
    if scaling.kind == "redis":
        common = {"address": scaling.address, "stream": scaling.stream,
                  "consumerGroup": scaling.group, "databaseIndex": str(scaling.database),
                  "enableTLS": "true" if scaling.tls else "false"}
        triggers: list[Manifest] = [
            {"type": "redis-streams", "name": "lag", "metadata": {**common, "lagCount": target}},
            {"type": "redis-streams", "name": "pending",
             "metadata": {**common, "pendingEntriesCount": target}},
        ]
        if auth:
            for trigger in triggers:
                trigger["authenticationRef"] = {"name": auth}
        advanced: Manifest = {"scalingModifiers": {
            "formula": "lag + pending", "target": target, "activationTarget": activation,
            "metricType": "AverageValue"}}
        return triggers, advanced
    if scaling.kind == "nats":
        address = scaling.address
        https = address.startswith("https://")
        address = address.removeprefix("https://").removeprefix("http://")
        return [{"type": "nats-jetstream", "name": "lag", "metadata": {
            "natsServerMonitoringEndpoint": address, "account": scaling.account or "$G",
            "stream": scaling.stream, "consumer": scaling.group, "lagThreshold": target,
            "activationLagThreshold": activation, "useHttps": "true" if https else "false"}}], {}
    raise ValueError(f"no KEDA trigger for a {scaling.kind!r} stream")


def trigger_authentication(spec: DeploymentSpec) -> Manifest | None:
    """keda.sh/v1alpha1 TriggerAuthentication: the stream's credentials, read
    by KEDA from the deployment's Secret; None when the stream needs none."""
    scaling = spec.lag_scaling
    if scaling is None or not (scaling.username or scaling.password):
        return None
    names = object_names(spec)
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "TriggerAuthentication",
        "metadata": {"name": names["TriggerAuthentication"], "labels": labels(spec.template)},
        "spec": {"secretTargetRef": [
            {"parameter": parameter, "name": names["Secret"], "key": key}
            for parameter, key in KEDA_SECRET_KEYS.items() if getattr(scaling, parameter)
        ]},
    }


def scaled_object(spec: DeploymentSpec) -> Manifest:
    """keda.sh/v1alpha1 ScaledObject scaling the Deployment on the stream's
    lag with Hangar's thresholds: min/max, lag per replica, activation (0 ↔ 1),
    cooldown to zero, the scale-down stabilization window, the HPA's scale-up
    limits, and a fallback that holds the current replicas while the broker
    cannot be read."""
    scaling = spec.lag_scaling
    if scaling is None:
        raise ValueError("no lag scaling in this spec")
    names = object_names(spec)
    auth = trigger_authentication(spec)
    triggers, advanced = _triggers(scaling, auth["metadata"]["name"] if auth else None)
    low = max(0, scaling.min_replicas)
    high = max(1, low, scaling.max_replicas)
    period = SCALE_UP_PERIOD_S
    advanced["horizontalPodAutoscalerConfig"] = {"behavior": {
        "scaleUp": {
            "stabilizationWindowSeconds": 0, "selectPolicy": "Max",
            "policies": [{"type": "Percent", "value": SCALE_UP_PERCENT, "periodSeconds": period},
                         {"type": "Pods", "value": SCALE_UP_PODS, "periodSeconds": period}],
        },
        "scaleDown": {
            "stabilizationWindowSeconds": min(STABILIZATION_MAX_S,
                                              max(0, scaling.stabilization_s)),
            "policies": [{"type": "Percent", "value": 100, "periodSeconds": period}],
        },
    }}
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": names["ScaledObject"], "labels": labels(spec.template)},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                               "name": names["Deployment"]},
            "pollingInterval": max(1, scaling.polling_s),
            "cooldownPeriod": max(0, scaling.cooldown_s),
            "minReplicaCount": low,
            "maxReplicaCount": high,
            "fallback": {"failureThreshold": FALLBACK_FAILURES, "replicas": max(1, low),
                         "behavior": "currentReplicas"},
            "advanced": advanced,
            "triggers": triggers,
        },
    }

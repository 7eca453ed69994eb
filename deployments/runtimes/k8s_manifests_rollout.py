"""Kubernetes manifests for a rollout (#15), as plain dicts: two Deployments
distinguished by the ``hangar.revision`` label of their pods, and the
Services that choose between them.

- the **primary** Deployment (the deployment's usual name) runs the stable
  revision (``spec.rollout.stable``), with its own Secret and ConfigMap, so
  a canary's new values never roll the stable pods;
- the **canary** Deployment (``<name>-canary``) runs the new revision (the
  spec's own template and replicas) with its own Secret and ConfigMap; its
  pods also carry ``hangar.track=canary``, which its selector includes (the
  primary's selector is immutable and older; its ReplicaSets never adopt the
  canary's pods, which have an owner);
- the **Service** selects the revision ``rollout.active`` names (blue-green:
  the stable one until the promotion, which patches this selector in one
  apply — the switch is atomic), or every revision (a canary without the
  gateway in front: the requests follow the replica proportion);
- blue-green's **preview Service** (``<name>-preview``) selects the new revision.

Pure functions, like :mod:`.k8s_manifests`; the driver's part is
:mod:`.kubernetes_rollout`.
"""
from __future__ import annotations

import dataclasses

from .base import LABEL_REVISION, DeploymentSpec
from .k8s_manifests import (
    Manifest,
    config_map,
    deployment,
    deployment_manifests,
    label_value,
    object_names,
    secret,
    service,
)

LABEL_TRACK = "hangar.track"
CANARY = "canary"
PREVIEW = "preview"


def primary_spec(spec: DeploymentSpec) -> DeploymentSpec:
    """The stable revision's half of a rollout spec, under the usual names."""
    stable = spec.rollout.stable
    return dataclasses.replace(spec, template=stable.template, replicas=stable.replicas,
                               secret_env=stable.secret_env,
                               revision=stable.revision, rollout=None)


def canary_spec(spec: DeploymentSpec) -> DeploymentSpec:
    """The new revision's half: its own names, explicit replicas (the split's)."""
    return dataclasses.replace(spec, name=f"{spec.name}-{CANARY}", rollout=None,
                               autoscale=None, lag_scaling=None, schedule=None)


def canary_names(spec: DeploymentSpec) -> dict[str, str]:
    """The canary's objects (and the preview Service) by kind, for ``spec``
    with or without a rollout."""
    names = object_names(dataclasses.replace(spec, name=f"{spec.name}-{CANARY}"))
    return {"Deployment": names["Deployment"], "Secret": names["Secret"],
            "ConfigMap": names["ConfigMap"], "Service": preview_name(spec)}


def preview_name(spec: DeploymentSpec) -> str:
    return object_names(dataclasses.replace(spec, name=f"{spec.name}-{PREVIEW}"))["Service"]


def canary_deployment(spec: DeploymentSpec) -> Manifest:
    manifest = deployment(canary_spec(spec))
    track = {LABEL_TRACK: CANARY}
    manifest["metadata"]["labels"].update(track)
    manifest["spec"]["selector"]["matchLabels"].update(track)
    manifest["spec"]["template"]["metadata"]["labels"].update(track)
    return manifest


def selecting(manifest: Manifest, revision: str | None) -> Manifest:
    """``manifest`` (a Service) selecting only the pods of ``revision``."""
    if revision:
        manifest["spec"]["selector"][LABEL_REVISION] = label_value(revision)
    return manifest


def preview_service(spec: DeploymentSpec) -> Manifest:
    manifest = service(dataclasses.replace(spec, name=f"{spec.name}-{PREVIEW}", rollout=None))
    return selecting(manifest, spec.rollout.preview)


def rollout_manifests(spec: DeploymentSpec) -> list[Manifest]:
    """Every object a deployment under a rollout needs, in apply order: the
    primary's (stable) objects with the Service selecting the active revision,
    then the canary's Secret, ConfigMap and Deployment, then the preview
    Service. The Service comes after both Deployments' pods exist to select."""
    primary = [m for m in deployment_manifests(primary_spec(spec))
               if m["kind"] not in ("Service",)]
    canary = canary_spec(spec)
    out = list(primary)
    if canary.secret_env:
        out.append(secret(canary))
    if canary.config:
        out.append(config_map(canary))
    out.append(canary_deployment(spec))
    if spec.template.port:
        out.append(selecting(service(primary_spec(spec)), spec.rollout.active))
        if spec.rollout.preview:
            out.append(preview_service(spec))
    return out

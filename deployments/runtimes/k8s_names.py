"""Kubernetes names for Hangar's objects: valid object names and label values
(shortened with a hash suffix when they must be), the labels and selectors
every object carries, and each kind's name for a deployment. Pure functions."""
from __future__ import annotations

import hashlib
import re

from .base import LABEL_DEPLOYMENT, LABEL_MANAGED, DeploymentSpec, InstanceSpec, managed_value

# CronJob names longer than 52 characters cannot be created (the Jobs they
# spawn append 11); using the same limit for every object keeps one name.
NAME_MAX = 52
LABEL_VALUE_MAX = 63

_LABEL_VALUE_RE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def _digest(value: str, length: int = 8) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:length]


def object_name(value: str, *, limit: int = NAME_MAX) -> str:
    """A name valid as an RFC 1035 label (the strictest Kubernetes rule, which
    Services need): lowercase letters, digits and '-', starting with a letter,
    ending with a letter or digit, at most ``limit`` characters. Names that
    had to be shortened or changed get a hash suffix so they stay distinct."""
    name = re.sub(r"[^a-z0-9-]+", "-", value.lower())
    name = re.sub(r"-{2,}", "-", name).strip("-")
    if not name[:1].isalpha():
        name = f"h-{name}".rstrip("-")
    if name == value and len(name) <= limit:
        return name
    suffix = _digest(value)
    return f"{name[: limit - len(suffix) - 1].rstrip('-')}-{suffix}"


def label_value(value: str) -> str:
    """A valid label value: at most 63 characters of alphanumerics, '-', '_'
    and '.', beginning and ending with an alphanumeric (or empty)."""
    if _LABEL_VALUE_RE.match(value) and len(value) <= LABEL_VALUE_MAX:
        return value
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", value)
    cleaned = re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", cleaned)
    suffix = _digest(value)
    cleaned = cleaned[: LABEL_VALUE_MAX - len(suffix) - 1]
    cleaned = re.sub(r"[^A-Za-z0-9]+$", "", cleaned)
    return f"{cleaned}-{suffix}" if cleaned else suffix


def is_label_value(value: str) -> bool:
    return len(value) <= LABEL_VALUE_MAX and bool(_LABEL_VALUE_RE.match(value))


def labels(template: InstanceSpec) -> dict[str, str]:
    return {key: label_value(value) for key, value in template.labels().items()}


def selector_labels(template: InstanceSpec) -> dict[str, str]:
    """What the Deployment and Service select on. A Deployment's selector is
    immutable, so it must not include anything that changes (the generation)."""
    own = labels(template)
    return {LABEL_DEPLOYMENT: own[LABEL_DEPLOYMENT], LABEL_MANAGED: own[LABEL_MANAGED]}


def deployment_selector(deployment_id: int) -> str:
    """The label selector for every object of a deployment."""
    return (f"{LABEL_DEPLOYMENT}={label_value(str(deployment_id))},"
            f"{LABEL_MANAGED}={label_value(managed_value())}")


def object_names(spec: DeploymentSpec) -> dict[str, str]:
    """The name of each kind of object for this deployment."""
    base = object_name(spec.name)
    return {
        "Secret": f"{base}-env",
        "ConfigMap": f"{base}-config",
        "Deployment": base,
        "Service": base,
        "HorizontalPodAutoscaler": base,
        "CronJob": base,
        "TriggerAuthentication": base,
        "ScaledObject": base,
    }

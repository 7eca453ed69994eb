"""Drivers by kind, as dotted paths loaded on first use (as Django loads a
database backend)."""
from __future__ import annotations

from django.utils.module_loading import import_string

from .base import RuntimeFailure

DRIVERS: dict[str, str] = {
    "docker": "deployments.runtimes.docker.DockerRuntime",
    "kubernetes": "deployments.runtimes.kubernetes.KubernetesRuntime",
    "local": "deployments.runtimes.local.LocalRuntime",
    "edge": "deployments.runtimes.edge.EdgeRuntime",
}


def get_driver(target):
    """The driver instance for a Target row."""
    path = DRIVERS.get(target.kind)
    if path is None:
        raise RuntimeFailure(f"unknown runtime kind {target.kind!r}", permanent=True)
    return import_string(path)(target)

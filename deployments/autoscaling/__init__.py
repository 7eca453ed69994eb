"""Autoscaling signals, registered by name (``Deployment.autoscale_signal``)
and loaded lazily; ``lag`` is measured at the stream's broker (``lag.py``).

A signal turns the latest per-instance observations into one number per
replica (``base.Signal``); ``scaler.autoscale`` decides HPA-style and acts
through the audited verb, outside the reconcile lock.
"""
from __future__ import annotations

from django.utils.module_loading import import_string

from .base import Signal

SIGNALS: dict[str, str] = {
    "cpu": "deployments.autoscaling.cpu.CpuSignal",
    "inflight": "deployments.autoscaling.inflight.InflightSignal",
    "lag": "deployments.autoscaling.lag.LagSignal",
}

_loaded: dict[str, Signal] = {}


def get_signal(name: str | None) -> Signal | None:
    """The registered signal, or None (manual scaling, or not measured here)."""
    path = SIGNALS.get(name or "")
    if path is None:
        return None
    if path not in _loaded:
        _loaded[path] = import_string(path)()
    return _loaded[path]


__all__ = ["SIGNALS", "Signal", "get_signal"]

"""System checks for Hangar's configuration, with stable ids."""
from __future__ import annotations

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register

from .models import TargetKind
from .runtimes import CONNECTION_SCHEMAS, DRIVERS


@register(Tags.compatibility)
def check_runtimes(app_configs, **kwargs):
    errors = []
    for kind in TargetKind.values:
        if kind not in DRIVERS:
            errors.append(Error(f"no runtime driver registered for kind {kind!r}",
                                id="deployments.E001"))
        if kind not in CONNECTION_SCHEMAS:
            errors.append(Error(f"no connection schema for kind {kind!r}", id="deployments.E002"))
    return errors


@register(Tags.security, deploy=True)
def check_production_shape(app_configs, **kwargs):
    messages = []
    if not settings.STANDALONE and not settings.REDIS_URL:
        messages.append(Warning(
            "DATABASE_URL is set but REDIS_URL is not: the worker queue and live updates "
            "fall back to single-machine transports",
            hint="Set REDIS_URL for a multi-process deployment.", id="deployments.W001"))
    if len(settings.HANGAR_ENCRYPTION_KEYS[0]) != 44:
        messages.append(Error("HANGAR_ENCRYPTION_KEY is not a Fernet key", id="deployments.E003"))
    return messages

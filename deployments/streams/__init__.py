"""Stream sources by kind (``redis``, ``nats``), loaded lazily as runtime
drivers are; ``base.py`` holds the contract.

:func:`source_for` builds the source of a stream deployment's settings (a
``patterns.stream.StreamSettings``), resolving ``url_secret`` from the team's
Secret rows.
"""
from __future__ import annotations

from django.utils.module_loading import import_string

from ..errors import Invalid
from ..models import Secret
from .base import (
    DeadLetter,
    Endpoint,
    LagReading,
    Replayed,
    Source,
    SourceConfig,
    SourceUnavailable,
)

SOURCES: dict[str, str] = {
    "redis": "deployments.streams.redis.RedisSource",
    "nats": "deployments.streams.nats.NatsSource",
}


def config_for(settings, *, team_id: int, secrets: dict[str, str] | None = None
               ) -> SourceConfig:
    """The resolved configuration of ``settings.source`` (a missing secret is
    a 422 naming ``url_secret``). ``secrets`` may carry values already read."""
    src = settings.source
    if src is None:
        raise Invalid({"pattern_settings": ["source: a stream deployment needs a source"]})
    url = src.url
    if src.url_secret:
        url = (secrets or {}).get(src.url_secret)
        if url is None:
            url = (Secret.objects.filter(team_id=team_id, name=src.url_secret)
                   .values_list("value", flat=True).first())
        if url is None:
            raise Invalid({"url_secret": [f"secret {src.url_secret!r} not found"]})
    output, deadletter = settings.outputs()
    return SourceConfig(
        kind=src.kind, url=url.strip(), stream=src.stream,
        group=getattr(src, "group", None) or getattr(src, "durable", ""),
        start_id=getattr(src, "start_id", "0"), subjects=tuple(getattr(src, "subjects", ())),
        output=output, deadletter=deadletter, max_deliveries=settings.max_deliveries,
        ack_wait_s=settings.ack_wait_s, claim_idle_s=settings.claim_idle_s,
        batch=settings.batch, monitoring=getattr(src, "monitoring", None) or "",
        account=getattr(src, "account", ""))


def get_source(config: SourceConfig) -> Source:
    path = SOURCES.get(config.kind)
    if path is None:
        raise Invalid({"source": [f"unknown source kind {config.kind!r}"]})
    return import_string(path)(config)


def source_for(settings, *, team_id: int, secrets: dict[str, str] | None = None) -> Source:
    return get_source(config_for(settings, team_id=team_id, secrets=secrets))


__all__ = ["SOURCES", "DeadLetter", "Endpoint", "LagReading", "Replayed", "Source", "SourceConfig",
           "SourceUnavailable", "config_for", "get_source", "source_for"]

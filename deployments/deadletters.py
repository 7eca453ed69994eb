"""The dead letters of a stream deployment: its source (``deployments.streams``,
built from the version's pattern settings, the URL resolved from the team's
secret) when that kind of source keeps dead letters (``supports_dead_letters``);
409 otherwise. The source's own error, ``SourceUnavailable``, is a 503."""
from __future__ import annotations

from .errors import Conflict, DomainError
from .patterns import get_pattern
from .streams import Source, SourceUnavailable, source_for

BrokerUnavailable = SourceUnavailable

NO_STREAM = "This deployment consumes no stream with dead letters."


def store_for(deployment) -> Source:
    """The deployment's stream source, for its dead letters (close it after use)."""
    pattern = get_pattern(deployment.agent.pattern)
    settings = pattern.settings(deployment.version)
    if getattr(settings, "source", None) is None:
        raise Conflict(NO_STREAM)
    try:
        source = source_for(settings, team_id=deployment.agent.team_id)
    except SourceUnavailable:
        raise
    except DomainError as exc:  # e.g. its secret is gone
        raise Conflict(f"{NO_STREAM} {exc.detail}") from None
    if not source.supports_dead_letters:
        raise Conflict(f"A {source.kind} source keeps no dead letters Hangar can read.")
    return source


__all__ = ["NO_STREAM", "BrokerUnavailable", "store_for"]

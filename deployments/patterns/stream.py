"""Stream: replicas of a consumer group on a stream, scaled on the lag Hangar
measures from the broker (``deployments.streams``, ``autoscaling.lag``).

A version's settings name the source by kind — ``redis`` (a stream key, a
consumer group, a start id) or ``nats`` (a JetStream stream and a durable pull
consumer) — with the connection URL in a team Secret (``url_secret``) or, for
loopback demos, given inline (``url``); the lag policy (target per replica,
activation, min/max, cooldown, stabilization window, polling interval) and the
delivery policy (deliveries before a dead letter, ack wait, claim idle time,
output and dead-letter streams). Instances get the connection as environment
(``streams.base.Source.env``); the URL travels as a secret.
"""
from __future__ import annotations

import ipaddress
import math
import re
from typing import Annotated, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..models import Health
from ..runtimes.base import LagScaling
from ..streams import poll, source_for
from .base import PatternSettings, Verdict
from .service import ServicePattern

SECRET_NAME = r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$"
# Redis stream ids a group may start from: 0 (everything), $ (only new), or an id.
START_ID = re.compile(r"^(0|\$|[0-9]{1,20}(-[0-9]{1,20})?)$")
# JetStream names: no whitespace, dots, wildcards or path separators.
JS_NAME = r"^[A-Za-z0-9_-]{1,200}$"
SUBJECT = re.compile(r"^[^\s]+$")
ACCOUNT = r"^[A-Za-z0-9_$-]{1,200}$"  # "$G": the global account
MONITORING = r"^(https?://)?[A-Za-z0-9.\[\]:-]{1,250}:[0-9]{1,5}$"
LOOPBACK = {"localhost"}


def _loopback_url(value: str, schemes: tuple[str, ...]) -> str:
    """An inline URL is for demos on this machine: loopback only (anything
    else belongs in a Secret row, where a password is encrypted at rest)."""
    parts = urlsplit(value)
    if parts.scheme not in schemes:
        raise ValueError(f"use a {' or '.join(s + '://' for s in schemes)} URL")
    host = parts.hostname or ""
    try:
        loopback = host in LOOPBACK or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError("an inline URL must point at this machine (127.0.0.1); "
                         "put other URLs in a secret and name it in url_secret")
    if parts.password:
        raise ValueError("an inline URL carries no password; use url_secret")
    return value


class _Source(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url_secret: str | None = Field(None, pattern=SECRET_NAME,
                                   description="name of the team secret holding the URL")
    url: str | None = Field(None, max_length=500, description="loopback demos only")

    @model_validator(mode="after")
    def _one_url(self):
        if (self.url_secret is None) == (self.url is None):
            raise ValueError("give exactly one of url_secret and url")
        return self


class RedisSource(_Source):
    kind: Literal["redis"]
    stream: str = Field(min_length=1, max_length=200, description="the stream key")
    group: str = Field(min_length=1, max_length=200, description="the consumer group")
    start_id: str = Field("0", description='where a new group starts: "0", "$" or an id')

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else _loopback_url(value, ("redis", "rediss"))

    @field_validator("start_id")
    @classmethod
    def _start(cls, value: str) -> str:
        if not START_ID.match(value):
            raise ValueError('"0", "$" or a stream id such as 1733101234567-0')
        return value


class NatsSource(_Source):
    kind: Literal["nats"]
    stream: str = Field(pattern=JS_NAME, description="the JetStream stream")
    subjects: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        min_length=1, max_length=20, description="subjects the stream captures")
    durable: str = Field(pattern=JS_NAME, description="the durable pull consumer")
    monitoring: str | None = Field(
        None, pattern=MONITORING, description="the server's HTTP monitoring endpoint, "
        "host:port (https:// for TLS), for KEDA; default: the URL's host on port 8222")
    account: str = Field("$G", pattern=ACCOUNT,
                         description="the stream's account, for KEDA")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else _loopback_url(value, ("nats", "tls"))

    @field_validator("subjects")
    @classmethod
    def _subjects(cls, value: list[str]) -> list[str]:
        for subject in value:
            if not SUBJECT.match(subject):
                raise ValueError(f"subject {subject!r} has whitespace")
        return value


Source = Annotated[RedisSource | NatsSource, Field(discriminator="kind")]


class StreamSettings(PatternSettings):
    source: Source | None = None
    lag_target: float | None = Field(None, gt=0, le=1e9,
                                     description="lag (messages) per replica")
    activation_lag: float = Field(0, ge=0, le=1e9,
                                  description="lag above which 0 → 1 replica")
    min_replicas: int = Field(0, ge=0, le=1000)
    max_replicas: int = Field(10, ge=1, le=1000)
    cooldown_s: int = Field(300, ge=0, le=86400, description="idle this long → 0 replicas")
    scale_down_window_s: int = Field(300, ge=0, le=86400)
    polling_s: float = Field(10, ge=0.2, le=3600, description="lag read every polling_s")
    max_deliveries: int = Field(5, ge=1, le=1000, description="deliveries before a dead letter")
    ack_wait_s: float = Field(30, gt=0, le=86400, description="NATS redelivery after this")
    claim_idle_s: float = Field(30, gt=0, le=86400, description="Redis reclaim after this")
    batch: int = Field(10, ge=1, le=10000, description="messages a consumer takes at once")
    output_stream: str | None = Field(None, min_length=1, max_length=200)
    deadletter_stream: str | None = Field(None, min_length=1, max_length=200)

    @model_validator(mode="after")
    def _bounds(self):
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas cannot exceed max_replicas")
        return self

    def outputs(self) -> tuple[str, str]:
        """The output and dead-letter streams (defaults derive from the source)."""
        assert self.source is not None
        base = self.source.stream
        sep = ":" if self.source.kind == "redis" else "-"
        return (self.output_stream or f"{base}{sep}output",
                self.deadletter_stream or f"{base}{sep}deadletter")


class StreamPattern(ServicePattern):
    name: ClassVar[str] = "stream"
    settings_schema: ClassVar[type[PatternSettings]] = StreamSettings
    autoscaling_signals: ClassVar[tuple[str, ...]] = ("lag", "cpu", "inflight")
    panels: ClassVar[tuple[str, ...]] = ("stream", "stream-deadletters")
    measures: ClassVar[bool] = True

    def autoscaling_signal(self, deployment) -> str | None:
        """``lag`` when the deployment asks for it, or when it asks for nothing
        and its version sets a lag target."""
        signal = deployment.autoscale_signal
        if not signal and self.settings(deployment.version).lag_target:
            return "lag" if self.settings(deployment.version).source else None
        return super().autoscaling_signal(deployment)

    def measure(self, deployment, *, force: bool = False):
        """The source's lag when a reading is due (a ``StreamSample``)."""
        return poll.measure(deployment, self.settings(deployment.version), force=force)

    def polling_s(self, version) -> float | None:
        settings = self.settings(version)
        return settings.polling_s if settings.source is not None else None

    def reading_due_at(self, deployment) -> float | None:
        polling = self.polling_s(deployment.version)
        return None if polling is None else poll.due_at(deployment, polling)

    def lag_scaling(self, deployment, version, *, policy) -> LagScaling | None:
        """The lag policy (an ``autoscaling.lag.Policy``) for a runtime that
        scales on the lag itself (KEDA), with where it reads the broker."""
        settings = self.settings(version)
        if settings.source is None:
            return None
        source = source_for(settings, team_id=deployment.agent.team_id, secrets={})
        endpoint = source.endpoint()
        return LagScaling(
            kind=settings.source.kind, stream=source.config.stream, group=source.config.group,
            address=endpoint.address, database=endpoint.database, tls=endpoint.tls,
            account=endpoint.account, username=endpoint.username, password=endpoint.password,
            min_replicas=policy.low, max_replicas=policy.high,
            target=max(1, math.ceil(policy.target)), activation=math.floor(policy.activation),
            cooldown_s=int(policy.cooldown_s), stabilization_s=int(policy.window_s),
            polling_s=max(1, math.ceil(settings.polling_s)))

    def instance_env(self, deployment, version, *, secrets: dict[str, str]
                     ) -> tuple[dict[str, str], set[str]]:
        """What each instance gets to consume the source, and which of those
        names are secret (the URL)."""
        settings = self.settings(version)
        if settings.source is None:
            return {}, set()
        source = source_for(settings, team_id=deployment.agent.team_id, secrets=secrets)
        return source.env(), set(source.secret_env_names)

    def rollup(self, deployment, rows, *, is_current, unreachable: dict[str, str]) -> Verdict:
        """As a service, and Degraded while the broker cannot be reached (the
        poller's last reading says why): replicas are not restarted for it."""
        verdict = super().rollup(deployment, rows, is_current=is_current,
                                 unreachable=unreachable)
        error = ((deployment.autoscale_state or {}).get("stream") or {}).get("error")
        if error and verdict.health in (Health.HEALTHY, Health.PROGRESSING, Health.DEGRADED):
            return Verdict(Health.DEGRADED, f"stream source unreachable: {error}",
                           requeue_in=verdict.requeue_in)
        return verdict

"""The stream-source contract: what Hangar needs from a broker, by kind.

A source (``redis``, ``nats``; registered in ``deployments.streams.SOURCES``)
is built from a stream deployment's settings and the connection URL, and
answers:

* :meth:`Source.ensure_group` — create the consumer group / durable consumer
  (and the stream) if missing; idempotent;
* :meth:`Source.lag` — a :class:`LagReading` measured from the broker now
  (never raises: a broker that cannot be reached is a reading with ``error``);
* the dead letters: :meth:`Source.dead_letters`, :meth:`Source.dead_letter`,
  :meth:`Source.replay`, :meth:`Source.purge`;
* :meth:`Source.env` — what each instance is given to consume it (the names in
  ``secret_env_names`` are secret: they go to a Secret object on Kubernetes).

One error type leaves a source: :class:`SourceUnavailable` (its message is the
broker's own words); no client objects or exceptions cross the boundary.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from ..errors import DomainError


class SourceUnavailable(DomainError):
    """The stream's broker did not answer or refused (503: retry later)."""

    status = 503
    default_detail = "The stream's broker is unavailable."


@dataclass(frozen=True)
class LagReading:
    """What the broker says about the consumer group at ``at``.

    ``lag`` is what scaling uses: messages not yet acknowledged, whether never
    delivered or delivered and pending; ``pending`` is the second part.
    """

    at: datetime
    lag: int | None = None
    pending: int | None = None
    produced: int | None = None  # entries ever added to the source (for in/out rates)
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and self.lag is not None


@dataclass(frozen=True)
class DeadLetter:
    id: str
    at: datetime | None
    source_id: str
    error: str
    deliveries: int
    input: str = ""
    fields: dict[str, Any] = field(default_factory=dict)
    instance: str = ""
    source_stream: str = ""
    group: str = ""


@dataclass(frozen=True)
class Replayed:
    ids: list[str]  # dead letters moved back to the source
    new_ids: list[str]  # their new ids in the source, in the same order
    missing: list[str] = field(default_factory=list)  # asked for but already gone


@dataclass(frozen=True)
class Endpoint:
    """Where another reader of the lag (KEDA) finds the broker: Redis
    ``host:port`` (with the URL's database, TLS and credentials), or the NATS
    server's HTTP monitoring endpoint and account."""

    address: str
    database: int = 0
    tls: bool = False
    username: str = ""
    password: str = ""
    account: str = ""


@dataclass(frozen=True)
class SourceConfig:
    """A source's settings, resolved: the URL is the secret's value."""

    kind: str
    url: str
    stream: str
    group: str  # Redis consumer group, or the NATS durable consumer
    start_id: str = "0"
    subjects: tuple[str, ...] = ()
    output: str = ""
    deadletter: str = ""
    max_deliveries: int = 5
    ack_wait_s: float = 30.0
    claim_idle_s: float = 30.0
    batch: int = 10
    timeout_s: float = 3.0
    monitoring: str = ""  # NATS: the HTTP monitoring endpoint (host:port)
    account: str = ""  # NATS: the account of the stream


class Source:
    kind: ClassVar[str] = ""
    # Whether the dead-letter methods and throughput() are implemented.
    supports_dead_letters: ClassVar[bool] = False
    # Environment names that carry a secret (the URL, which may hold a password).
    secret_env_names: ClassVar[tuple[str, ...]] = ("STREAM_URL",)

    def __init__(self, config: SourceConfig):
        self.config = config

    def ensure_group(self) -> None:
        raise NotImplementedError

    def lag(self) -> LagReading:
        raise NotImplementedError

    def dead_letters(self, *, limit: int = 50, after: str | None = None) -> list[DeadLetter]:
        raise NotImplementedError

    def dead_letter_count(self) -> int:
        raise NotImplementedError

    def dead_letter(self, entry_id: str) -> DeadLetter:
        raise NotImplementedError

    def replay(self, ids: list[str] | None = None) -> Replayed:
        raise NotImplementedError

    def purge(self, ids: list[str] | None = None) -> int:
        raise NotImplementedError

    def throughput(self, window_s: int = 60):
        """Messages in and results out over the last ``window_s`` seconds, and
        results per consumer (a ``deployments.streamstats.Throughput``)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release connections (a source is cheap to build again)."""

    def endpoint(self) -> Endpoint:
        """Where another reader of the lag (KEDA's scaler) reaches the broker."""
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        """What an instance needs to consume this source (the reference agent's
        names; ``STREAM_URL`` is secret)."""
        c = self.config
        return {
            "STREAM_KIND": c.kind, "STREAM_URL": c.url, "STREAM_NAME": c.stream,
            "STREAM_GROUP": c.group, "STREAM_OUTPUT": c.output,
            "STREAM_DEADLETTER": c.deadletter, "STREAM_MAX_DELIVERIES": str(c.max_deliveries),
            "STREAM_BATCH": str(c.batch),
            "STREAM_CLAIM_IDLE_MS": str(int(c.claim_idle_s * 1000)),
            "STREAM_ACK_WAIT_MS": str(int(c.ack_wait_s * 1000)),
            "STREAM_START_ID": c.start_id, "STREAM_SUBJECTS": ",".join(c.subjects),
        }

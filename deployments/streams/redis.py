"""Redis Streams (redis-py): the consumer group's lag from ``XINFO GROUPS``
(entries not yet delivered to the group) plus its pending entries
(``XPENDING``: delivered, not acknowledged), read in one ``MULTI`` so both
figures are of the same moment."""
from __future__ import annotations

from typing import ClassVar
from urllib.parse import unquote, urlsplit

import redis
from django.utils import timezone

from .base import Endpoint, LagReading, Source, SourceUnavailable
from .redis_deadletters import RedisDeadLetters

# Counting undelivered entries by range when Redis cannot say (lag is nil after
# XDEL or a trim): at most this many are counted.
COUNT_LIMIT = 1_000_000


class RedisSource(RedisDeadLetters, Source):
    kind: ClassVar[str] = "redis"

    def __init__(self, config):
        super().__init__(config)
        self._client: redis.Redis | None = None

    @property
    def client(self) -> redis.Redis:
        if self._client is None:
            t = self.config.timeout_s
            self._client = redis.Redis.from_url(self.config.url, decode_responses=True,
                                                socket_connect_timeout=t, socket_timeout=t)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _call(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except redis.RedisError as exc:
            self.close()
            raise SourceUnavailable(_words(exc)) from None

    def endpoint(self) -> Endpoint:
        """The URL's host and port, database, TLS (``rediss://``) and credentials."""
        parts = urlsplit(self.config.url)
        host = parts.hostname or "localhost"
        if ":" in host:
            host = f"[{host}]"
        try:
            database = int((parts.path or "/0").strip("/") or 0)
        except ValueError:
            database = 0
        return Endpoint(address=f"{host}:{parts.port or 6379}", database=database,
                        tls=parts.scheme == "rediss", username=unquote(parts.username or ""),
                        password=unquote(parts.password or ""))

    def ensure_group(self) -> None:
        c = self.config
        try:
            self.client.xgroup_create(c.stream, c.group, id=c.start_id, mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                self.close()
                raise SourceUnavailable(_words(exc)) from None
        except redis.RedisError as exc:
            self.close()
            raise SourceUnavailable(_words(exc)) from None

    def lag(self) -> LagReading:
        c = self.config
        try:
            pipe = self.client.pipeline(transaction=True)
            pipe.xinfo_groups(c.stream)
            pipe.xpending(c.stream, c.group)
            pipe.xinfo_stream(c.stream)
            groups, pending, stream = pipe.execute()
        except redis.ResponseError as exc:
            self.close()
            if "no such key" in str(exc).lower() or "NOGROUP" in str(exc):
                return LagReading(at=timezone.now(),
                                  error=f"stream {c.stream!r} or group {c.group!r} missing")
            return LagReading(at=timezone.now(), error=_words(exc))
        except redis.RedisError as exc:
            self.close()
            return LagReading(at=timezone.now(), error=_words(exc))
        at = timezone.now()
        group = next((g for g in groups if g.get("name") == c.group), None)
        if group is None:
            return LagReading(at=at, error=f"group {c.group!r} missing on {c.stream!r}")
        undelivered = group.get("lag")
        if undelivered is None:  # Redis cannot tell (entries deleted): count them
            try:
                undelivered = len(self.client.xrange(
                    c.stream, f"({group['last-delivered-id']}", "+", count=COUNT_LIMIT))
            except redis.RedisError as exc:
                self.close()
                return LagReading(at=at, error=_words(exc))
        waiting = int(pending.get("pending") or 0)
        produced = stream.get("entries-added")
        return LagReading(at=at, lag=int(undelivered) + waiting, pending=waiting,
                          produced=int(produced) if produced is not None else None)


def _words(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return f"Redis: {text}"[:300]

"""HTTP to Hangar: one keep-alive connection per ``Client`` (one per thread),
``Authorization: Device <token>`` on every call after enrolment, and three
ways a call fails: ``Offline`` (no answer at all: refused, reset, timed out),
``Unauthorized`` (401: revoked or unknown device, or a bad enrolment token)
and ``ServerError`` (any other non-2xx, with Hangar's ``detail``)."""
from __future__ import annotations

import http.client
import json
import ssl
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import urljoin, urlsplit

USER_AGENT = "hangar-edge/0.1"


class Offline(Exception):
    """Hangar did not answer."""


@dataclass
class ServerError(Exception):
    status: int
    detail: str
    retry_after: float | None = None

    def __str__(self) -> str:
        return f"HTTP {self.status}: {self.detail}"


class Unauthorized(ServerError):
    pass


class TooLarge(Exception):
    """A streamed body went past its limit (the connection is dropped)."""


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body) if self.body else None


def _detail(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return body[:300].decode(errors="replace")
    if isinstance(data, dict):
        detail = data.get("detail", data.get("message", data))
        return detail if isinstance(detail, str) else json.dumps(detail)
    return str(data)


class Client:
    def __init__(self, server: str, *, token: str | None = None, timeout: float = 30.0,
                 ca_file: str | None = None):
        self.server = server.rstrip("/") + "/"
        self.token = token
        self.timeout = timeout
        parts = urlsplit(self.server)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"the server must be an http(s) URL, not {server!r}")
        self._parts = parts
        self._context = ssl.create_default_context(cafile=ca_file) if parts.scheme == "https" \
            else None
        self._connection: http.client.HTTPConnection | None = None

    def url(self, path: str) -> str:
        """``path`` relative to the server URL ("api/v1/edge/state"), or a URL
        Hangar sent (an absolute path or a full URL on the same server)."""
        return urljoin(self.server, path)

    def _connect(self, host: str, port: int | None, scheme: str) -> http.client.HTTPConnection:
        if scheme == "https":
            return http.client.HTTPSConnection(host, port, timeout=self.timeout,
                                               context=self._context)
        return http.client.HTTPConnection(host, port, timeout=self.timeout)

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def request(self, method: str, path: str, *, body: bytes | None = None,
                headers: dict[str, str] | None = None, ok=(200, 201, 204, 304),
                sink: BinaryIO | None = None, max_bytes: int | None = None) -> Response:
        """One call. With ``sink``, a 2xx body is streamed into it (at most
        ``max_bytes``) instead of being held in memory."""
        target = urlsplit(self.url(path))
        if (target.scheme, target.netloc) != (self._parts.scheme, self._parts.netloc):
            raise ValueError(f"{path} is not on {self.server}")  # never send the token elsewhere
        all_headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if self.token:
            all_headers["Authorization"] = f"Device {self.token}"
        all_headers.update(headers or {})
        selector = target.path + (f"?{target.query}" if target.query else "")
        for attempt in (1, 2):
            if self._connection is None:
                self._connection = self._connect(target.hostname, target.port, target.scheme)
            try:
                self._connection.request(method, selector, body=body, headers=all_headers)
                raw = self._connection.getresponse()
                if sink is not None and 200 <= raw.status < 300:
                    data = b""
                    self._stream(raw, sink, max_bytes)
                else:
                    data = raw.read()
            except TooLarge:
                self.close()
                raise
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self.close()
                if attempt == 2:  # a kept-alive connection the server had closed: once more
                    raise Offline(str(exc)) from None
                continue
            except (TimeoutError, OSError, http.client.HTTPException) as exc:
                self.close()
                raise Offline(str(exc) or type(exc).__name__) from None
            break
        response = Response(raw.status, {k.lower(): v for k, v in raw.getheaders()}, data)
        if raw.will_close:
            self.close()
        if response.status in ok:
            return response
        retry_after = None
        try:
            retry_after = float(response.headers.get("retry-after", ""))
        except ValueError:
            pass
        error = Unauthorized if response.status == 401 else ServerError
        raise error(response.status, _detail(data), retry_after)

    @staticmethod
    def _stream(raw: http.client.HTTPResponse, sink: BinaryIO, max_bytes: int | None) -> None:
        total = 0
        while chunk := raw.read(64 * 1024):
            total += len(chunk)
            if max_bytes is not None and total > max_bytes:
                raise TooLarge(f"the body is larger than {max_bytes} bytes")
            sink.write(chunk)

    def get_json(self, path: str, **kwargs) -> Response:
        return self.request("GET", path, **kwargs)

    def post_json(self, path: str, payload, **kwargs) -> Response:
        return self.request("POST", path, body=json.dumps(payload).encode(),
                            headers={"Content-Type": "application/json"}, **kwargs)

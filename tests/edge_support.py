"""Real hangar-edge processes for the fleet tests: bundles built from the
example sensor program, agent processes each with its own data directory,
and a TCP proxy that stands between one device and Hangar so the test can
make the server unreachable for that device alone (and cut a connection after
an upload went through but before its answer came back)."""
from __future__ import annotations

import io
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

from hangar_edge.cli import local_status

ROOT = Path(__file__).resolve().parent.parent
SENSOR = ROOT / "edge_agent" / "examples" / "sensor"


def sensor_bundle(**env: str) -> bytes:
    """The example sensor bundle as a tar.gz, its manifest's env overridden."""
    manifest = json.loads((SENSOR / "manifest.json").read_text())
    manifest["env"].update(env)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        tar.add(SENSOR / "main.py", "main.py")
        data = json.dumps(manifest).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


class AgentProcess:
    """``python -m hangar_edge`` with its own data directory and log."""

    def __init__(self, root: Path, name: str, server: str, token: str, *extra: str,
                 env: dict | None = None):
        self.name = name
        self.data_dir = root / name
        self.log = root / f"{name}.log"
        root.mkdir(parents=True, exist_ok=True)
        self.clock_file = root / f"{name}.clock"
        self.clock_file.write_text("0")
        self.args = [sys.executable, "-m", "hangar_edge", "--server", server, "--token", token,
                     "--data-dir", str(self.data_dir), "--name", name,
                     "--clock-file", str(self.clock_file), "--poll-interval", "1",
                     "--stable-after", "3", "--status-interval", "2", "--upload-interval", "0.5",
                     "--restart-backoff-max", "2", "--offline-backoff-max", "5",
                     "--record-interval", "3600", *extra]
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.process: subprocess.Popen | None = None

    def start(self) -> AgentProcess:
        self.process = subprocess.Popen(self.args, cwd=ROOT / "edge_agent", env=self.env,
                                        stdout=self.log.open("ab"), stderr=subprocess.STDOUT,
                                        start_new_session=True)
        return self

    def advance(self, seconds: float) -> None:
        """Move this agent's clock (every timer it has) ``seconds`` ahead."""
        offset = float(self.clock_file.read_text() or 0) + seconds
        tmp = self.clock_file.with_suffix(".tmp")
        tmp.write_text(str(offset))
        tmp.replace(self.clock_file)

    def status(self) -> dict:
        return local_status(self.data_dir)

    def identity(self) -> dict:
        return json.loads((self.data_dir / "identity.json").read_text())

    def stop(self, timeout: float = 40) -> int | None:
        process = self.process
        if process is None or process.poll() is not None:
            return process.returncode if process else None
        os.killpg(process.pid, signal.SIGTERM)
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            return process.wait()

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


def wait_for(predicate, what: str, timeout: float = 90.0, interval: float = 0.25,
             on_fail=lambda: ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}\n{on_fail()}")


class Proxy:
    """A TCP proxy on 127.0.0.1 in front of Hangar for one device. ``down()``
    closes the listening socket and every connection (the device then gets
    'connection refused', as when its link is gone); ``up()`` listens again on
    the same port. ``cut_uploads(n)``: the next ``n`` answers to
    ``POST /v1/traces`` are swallowed and the connection is closed — Hangar
    stored the spans, the device never heard it did."""

    def __init__(self, upstream_port: int):
        self.upstream = ("127.0.0.1", upstream_port)
        self.port = 0
        self._listener: socket.socket | None = None
        self._pairs: dict[socket.socket, socket.socket] = {}
        self._upstreams: set[socket.socket] = set()
        self._cut: set[socket.socket] = set()  # devices' sockets whose next answer is dropped
        self._uploads_to_cut = 0
        self.cut_count = 0
        self._lock = threading.Lock()
        self._selector = selectors.DefaultSelector()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.up()
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        with self._lock:
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", self.port))
            listener.listen(64)
            listener.setblocking(False)
            self.port = listener.getsockname()[1]
            self._listener = listener
            self._selector.register(listener, selectors.EVENT_READ)

    def down(self) -> None:
        with self._lock:
            if self._listener is not None:
                self._selector.unregister(self._listener)
                self._listener.close()
                self._listener = None
            for sock in list(self._pairs):
                self._close(sock)

    def cut_uploads(self, n: int) -> None:
        with self._lock:
            self._uploads_to_cut = n

    def close(self) -> None:
        self.down()
        self._stopping = True
        self._thread.join(timeout=5)

    def _close(self, sock: socket.socket) -> None:
        other = self._pairs.pop(sock, None)
        for s in (sock, other):
            if s is None:
                continue
            self._pairs.pop(s, None)
            self._cut.discard(s)
            self._upstreams.discard(s)
            try:
                self._selector.unregister(s)
            except (KeyError, ValueError):
                pass
            s.close()

    def _loop(self) -> None:
        while not self._stopping:
            for key, _ in self._selector.select(timeout=0.1):
                with self._lock:
                    sock = key.fileobj
                    if sock is self._listener:
                        self._accept()
                    elif sock in self._pairs:
                        self._forward(sock)

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except OSError:
            return
        try:
            upstream = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            client.close()
            return
        for s in (client, upstream):
            s.setblocking(False)
            self._selector.register(s, selectors.EVENT_READ)
        self._pairs[client], self._pairs[upstream] = upstream, client
        self._upstreams.add(upstream)

    def _forward(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            return self._close(sock)
        other = self._pairs[sock]
        if sock in self._upstreams and other in self._cut:
            self.cut_count += 1
            return self._close(sock)  # Hangar answered; the device never hears it
        if sock not in self._upstreams and data.startswith(b"POST /v1/traces") \
                and self._uploads_to_cut > 0:
            self._uploads_to_cut -= 1
            self._cut.add(sock)
        try:
            other.setblocking(True)
            other.sendall(data)
            other.setblocking(False)
        except OSError:
            self._close(sock)

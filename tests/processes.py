"""Real processes for the tests that run Hangar as it is served: a free port on
127.0.0.1, the web server started as in the Dockerfile, waiting for an HTTP
answer, and stopping a process group."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def database_env(**extra: str) -> dict:
    """The environment for a server process on this test run's PostgreSQL
    database (the one pytest-django created) and Redis."""
    params = connection.get_connection_params()
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="tests.settings",
        DATABASE_URL=f"postgres://{params['user']}@{params['host']}:{params['port']}/"
                     f"{params['dbname']}",
        **extra)
    return env


def start_web(port: int, env: dict, log: Path) -> subprocess.Popen:
    """uvicorn serving ``controlplane.asgi`` on 127.0.0.1:``port`` (the
    production command, bound to loopback), in its own process group."""
    return subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "controlplane.asgi:application", "--host", "127.0.0.1",
         "--port", str(port), "--ws", "websockets-sansio", "--lifespan", "on"],
        cwd=ROOT, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT,
        start_new_session=True)


def wait_for(url: str, process: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    """Until ``url`` answers 200; fails with the log if the process exits or
    the time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{process.args} exited early:\n" + log.read_text())
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except (requests.ConnectionError, requests.Timeout):
            pass  # not listening yet, or too busy starting to answer in time
        time.sleep(0.2)
    stop(process)  # the caller's teardown never runs when its setup fails
    raise AssertionError(f"{url} never answered:\n" + log.read_text())


def stop(process: subprocess.Popen | None, timeout: float = 30) -> None:
    """SIGTERM the process group, SIGKILL it if it lingers."""
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()

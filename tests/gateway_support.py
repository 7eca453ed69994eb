"""Real processes for the gateway tests: the gateway under its own uvicorn,
reference agents as plain processes on loopback, and the rows that make them
a deployment's ready instances."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import requests

from deployments.events import Instances, publish
from deployments.models import Instance

from .processes import ROOT, free_port, wait_for

AGENT = ROOT / "agents" / "reference" / "agent.py"


def start_gateway(port: int, env: dict, log: Path, **extra: str) -> subprocess.Popen:
    """``uvicorn gateway.asgi:application`` on 127.0.0.1:``port``, own process group."""
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "gateway.asgi:application", "--host", "127.0.0.1",
         "--port", str(port), "--lifespan", "on", "--no-access-log"],
        cwd=ROOT, env={**env, **extra}, stdout=log.open("ab"), stderr=subprocess.STDOUT,
        start_new_session=True)
    wait_for(f"http://127.0.0.1:{port}/healthz", process, log)
    return process


def start_agent(name: str, log: Path, **env: str) -> tuple[subprocess.Popen, int]:
    """A reference agent in realtime mode on a free loopback port, once ready."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(AGENT)], cwd=ROOT, stdout=log.open("ab"),
        stderr=subprocess.STDOUT, start_new_session=True,
        env={"PATH": "/usr/bin:/bin", "AGENT_MODE": "realtime", "PORT": str(port),
             "HANGAR_INSTANCE": name, **env})
    wait_for(f"http://127.0.0.1:{port}/readyz", process, log)
    return process, port


def ready_instance(deployment, name: str, port: int, *, announce: bool = True) -> Instance:
    """The row the reconciler writes for a ready replica (and the live event it sends)."""
    row = Instance.objects.create(
        deployment=deployment, target=deployment.target, name=name, address=f"127.0.0.1:{port}",
        port=port, phase="running", health="Healthy", version=deployment.version,
        revision=deployment.revision)
    if announce:
        publish(deployment.agent.team_id, Instances(), deployment_id=deployment.pk)
    return row


def wait_until(check, *, timeout: float = 30, what: str = "the condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def serves(url: str, headers: dict, replica: str | None = None) -> bool:
    """The gateway answers 200 from ``replica`` (any replica when None)."""
    try:
        answer = requests.post(url, json={"input": "ping"}, headers=headers, timeout=10)
    except requests.ConnectionError:
        return False
    return answer.status_code == 200 and (
        replica is None or answer.headers.get("x-hangar-replica") == replica)

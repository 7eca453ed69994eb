"""The README's run command, started as a newcomer would, serves a logged-in
dashboard listing the demo agent, with a worker running; re-running is safe."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests

from .processes import ROOT, free_port, stop, wait_for

pytestmark = pytest.mark.slow


def start(data_dir: Path, port: int) -> tuple[subprocess.Popen, Path]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HANGAR_", "DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS"))}
    env.update(HANGAR_DATA_DIR=str(data_dir), HANGAR_PORT=str(port))
    log = data_dir.parent / f"run-{port}.log"
    process = subprocess.Popen(["bash", "scripts/run"], cwd=ROOT, env=env,
                               stdout=log.open("w"), stderr=subprocess.STDOUT,
                               start_new_session=True)
    return process, log


def login(base: str, password: str) -> requests.Session:
    session = requests.Session()
    session.get(f"{base}/login/", timeout=10)
    response = session.post(f"{base}/login/", timeout=10, data={
        "username": "admin", "password": password,
        "csrfmiddlewaretoken": session.cookies["csrftoken"]},
        headers={"Referer": f"{base}/login/"})
    assert response.url == f"{base}/fleet/", "login did not land on the dashboard"
    session.dashboard = response.text
    return session


def login_and_fetch(base: str, password: str) -> str:
    return login(base, password).dashboard


def wait_healthy(session: requests.Session, base: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        items = session.get(f"{base}/api/v1/deployments", timeout=10).json()["items"]
        if items and items[0]["health"] == "Healthy":
            return items[0]
        assert time.monotonic() < deadline, items
        time.sleep(1)


def kill_local_agents(data_dir: Path) -> None:
    import json

    for state in data_dir.glob("local-runtime/*/*/state.json"):
        try:
            os.killpg(json.loads(state.read_text())["pid"], signal.SIGKILL)
        except (ProcessLookupError, KeyError, ValueError):
            pass


def test_run_command_serves_the_demo_dashboard(tmp_path):
    data_dir = tmp_path / "var"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process, log = start(data_dir, port)
    try:
        wait_for(f"{base}/healthz", process, log, timeout=180)
        output = log.read_text()
        match = re.search(r"Log in as: admin / (\S+)", output)
        assert match, output
        password = match.group(1)
        assert f"Hangar is at {base}/" in output
        session = login(base, password)
        assert "Demo assistant" in session.dashboard and "demo-assistant" in session.dashboard
        assert (data_dir / "hangar.sqlite3").exists()
        # The worker runs the demo agent on the local driver until it is healthy.
        deployment = wait_healthy(session, base)
        assert deployment["health_reason"] == "1 of 1 replicas healthy"
        instance = session.get(f"{base}/api/v1/deployments/{deployment['id']}/instances",
                               timeout=10).json()[0]
        answer = requests.post(f"http://{instance['address']}/invoke", json={"input": "hi"},
                               timeout=10)
        assert answer.status_code == 200
    except BaseException:
        kill_local_agents(data_dir)
        raise
    finally:
        stop(process)

    # Re-running keeps the account and the data, and seeds nothing twice.
    process, log = start(data_dir, port)
    try:
        wait_for(f"{base}/healthz", process, log, timeout=180)
        assert f"Log in as: admin / {password}" in log.read_text()
        session = login(base, password)
        assert session.dashboard.count("demo/demo-assistant@demo</div>") == 1
        # The agent process outlived the restart and was re-adopted, not duplicated.
        deployment = wait_healthy(session, base)
        instances = session.get(f"{base}/api/v1/deployments/{deployment['id']}/instances",
                                timeout=10).json()
        assert [i["name"] for i in instances] == [instance["name"]]
        assert instances[0]["restarts"] == 0
    finally:
        stop(process)
        kill_local_agents(data_dir)

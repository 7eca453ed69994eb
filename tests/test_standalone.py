"""The README's run command, started as a newcomer would, serves a logged-in
dashboard listing the demo agent, with a worker running; re-running is safe; a
signal to the script stops everything it started (agents excepted, by design,
until ``scripts/run stop``); with DATABASE_URL and REDIS_URL it keeps its keys."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

from .processes import ROOT, free_port, stop, wait_for

pytestmark = pytest.mark.slow

STOP_WITHIN_S = 20


def standalone_ports() -> dict[str, str]:
    """A port range for a standalone server's local agents that no other test
    process uses: each xdist worker's own tests take theirs from 20000 + 2500 n
    (tests/settings.py), and the default range (from 20000) overlapped them. A
    server knows only its own database's ports, and checks that a port is free
    when it picks it, so a container of the other worker's test could start on
    the same port a moment later and crash-loop one of its agents."""
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    low = 26000 + 1000 * worker
    return {"HANGAR_PORT_MIN": str(low), "HANGAR_PORT_MAX": str(low + 999)}


def run_env(data_dir: Path, port: int, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HANGAR_", "DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS"))}
    env.update(HANGAR_DATA_DIR=str(data_dir), HANGAR_PORT=str(port), **standalone_ports(),
               **extra)
    return env


def start(data_dir: Path, port: int, **extra: str) -> tuple[subprocess.Popen, Path]:
    log = data_dir.parent / f"run-{port}.log"
    process = subprocess.Popen(["bash", "scripts/run"], cwd=ROOT,
                               env=run_env(data_dir, port, **extra),
                               stdout=log.open("a"), stderr=subprocess.STDOUT,
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


def password_from(log: Path) -> str:
    match = re.search(r"Log in as: admin / (\S+)", log.read_text())
    assert match, log.read_text()
    return match.group(1)


def wait_healthy(session: requests.Session, base: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        items = session.get(f"{base}/api/v1/deployments", timeout=10).json()["items"]
        if items and items[0]["health"] == "Healthy":
            return items[0]
        assert time.monotonic() < deadline, items
        time.sleep(1)


def wait_run(session: requests.Session, base: str, deployment_id: int,
             timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        items = session.get(f"{base}/api/v1/runs", params={"deployment": deployment_id},
                            timeout=10).json()["items"]
        if items:
            return items[0]
        assert time.monotonic() < deadline, "no run recorded from the demo agent's spans"
        time.sleep(1)


def instances_of(session: requests.Session, base: str, deployment_id: int) -> list[dict]:
    data = session.get(f"{base}/api/v1/deployments/{deployment_id}/instances",
                       timeout=10).json()
    return data["items"] if isinstance(data, dict) else data


def agent_pids(data_dir: Path) -> set[int]:
    pids = set()
    for state in data_dir.glob("local-runtime/*/*/state.json"):
        try:
            pids.add(json.loads(state.read_text())["pid"])
        except (OSError, KeyError, ValueError):
            pass
    return pids


def kill_local_agents(data_dir: Path) -> None:
    for pid in agent_pids(data_dir):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def started_at(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def process_tree(pid: int) -> dict[int, str]:
    """Every descendant of ``pid`` (and itself), with its start time."""
    found, stack = {}, [pid]
    while stack:
        current = stack.pop()
        start_time = started_at(current)
        if start_time is None:
            continue
        found[current] = start_time
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                stack.extend(int(c) for c in (task / "children").read_text().split())
            except OSError:
                pass
    return found


def alive(processes: dict[int, str]) -> dict[int, str]:
    return {pid: t for pid, t in processes.items() if started_at(pid) == t}


def wait_gone(processes: dict[int, str], timeout: float = STOP_WITHIN_S) -> dict[int, str]:
    deadline = time.monotonic() + timeout
    while alive(processes) and time.monotonic() < deadline:
        time.sleep(0.2)
    return alive(processes)


def port_free(port: int) -> bool:
    """Nothing listens on it: a server can bind it again (with SO_REUSEADDR,
    as uvicorn does, so connections in TIME_WAIT do not count)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen()
        except OSError:
            return False
        return True


def describe(processes: dict[int, str]) -> list[str]:
    out = []
    for pid in processes:
        try:
            out.append(f"{pid}: " + Path(f"/proc/{pid}/cmdline").read_bytes()
                       .replace(b"\0", b" ").decode())
        except OSError:
            pass
    return out


def test_run_command_serves_the_demo_dashboard_and_stops_cleanly(tmp_path):
    data_dir = tmp_path / "var"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process, log = start(data_dir, port)
    try:
        wait_for(f"{base}/healthz", process, log, timeout=300)
        password = password_from(log)
        assert f"Hangar is at {base}/" in log.read_text()
        session = login(base, password)
        assert "Demo assistant" in session.dashboard and "demo-assistant" in session.dashboard
        assert (data_dir / "hangar.sqlite3").exists()
        # The worker runs the demo agent on the local driver until it is healthy.
        deployment = wait_healthy(session, base)
        assert deployment["health_reason"] == "1 of 1 replicas healthy"
        instance = instances_of(session, base, deployment["id"])[0]
        answer = requests.post(f"http://{instance['address']}/invoke", json={"input": "hi"},
                               timeout=10)
        assert answer.status_code == 200
        # The demo agent exports its spans (the run install has the `agent` extra,
        # not the test tools) and its model has a price: the run has a real cost.
        run = wait_run(session, base, deployment["id"])
        assert run["model"] == "gpt-4o-mini" and run["cost_status"] == "priced", run
        assert float(run["cost_usd"]) > 0
        # Static files are streamed without Django's sync-iterator warning.
        assert session.get(f"{base}/static/vendor/htmx.min.js", timeout=10).status_code == 200

        # Two follow streams: one closed by its client, one left open and idle.
        logs_url = (f"{base}/api/v1/deployments/{deployment['id']}/instances/"
                    f"{instance['name']}/logs?follow=true&tail=1")
        closed = session.get(logs_url, stream=True, timeout=10)
        assert closed.headers["Content-Type"].startswith("text/event-stream")
        assert next(closed.iter_content(chunk_size=None)).startswith(b": following")
        closed.close()
        abandoned = session.get(logs_url, stream=True, timeout=10)
        assert next(abandoned.iter_content(chunk_size=None)).startswith(b": following")

        # SIGTERM to the script alone (not its process group) stops web, worker
        # and beat; the agent processes stay to be re-adopted, and it says so.
        tree = process_tree(process.pid)
        agents = {pid: t for pid, t in tree.items()
                  if os.getsid(pid) in agent_pids(data_dir)}
        services = {pid: t for pid, t in tree.items() if pid not in agents}
        assert agents and len(services) >= 3, describe(tree)
        os.kill(process.pid, signal.SIGTERM)
        process.wait(timeout=STOP_WITHIN_S)
        left = wait_gone(services)
        assert not left, describe(left)
        assert port_free(port)
        assert "'scripts/run stop' ends them" in log.read_text()
        assert alive(agents) == agents
        abandoned.close()
        assert "must consume synchronous iterators" not in log.read_text()
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
        adopted = instances_of(session, base, deployment["id"])
        assert [i["name"] for i in adopted] == [instance["name"]]
        assert adopted[0]["restarts"] == 0

        # `scripts/run stop` from another shell ends the server and the agents.
        tree = process_tree(process.pid)
        stopper = subprocess.run(["bash", "scripts/run", "stop"], cwd=ROOT,
                                 env=run_env(data_dir, port), capture_output=True, text=True,
                                 timeout=120)
        assert stopper.returncode == 0, stopper.stderr
        assert "Stopped 1 agent process." in stopper.stdout, (
            stopper.stdout, stopper.stderr, alive(agents), agent_pids(data_dir),
            log.read_text()[-4000:])
        process.wait(timeout=STOP_WITHIN_S)
        left = wait_gone(tree)
        assert not left, describe(left)
        assert port_free(port)
        agent_port = int(instance["address"].rsplit(":", 1)[1])
        assert port_free(agent_port)
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://{instance['address']}/healthz", timeout=5)
    finally:
        stop(process)
        kill_local_agents(data_dir)


def test_run_on_postgres_and_redis_generates_and_keeps_its_keys(tmp_path):
    import psycopg
    import redis

    database = f"{os.environ.get('HANGAR_TEST_DB_NAME', 'test_hangar')}_run"
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15")
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres",
                         autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{database}"')
    redis.Redis.from_url(redis_url).flushdb()
    services = {"DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{database}",
                "REDIS_URL": redis_url}
    data_dir = tmp_path / "var"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process, log = start(data_dir, port, **services)
    try:
        wait_for(f"{base}/healthz", process, log, timeout=300)
        assert "ConfigError" not in log.read_text()
        keys = {name: (data_dir / name).read_text()
                for name in ("hangar_secret_key", "hangar_encryption_key")}
        assert all(keys.values())
        assert not (data_dir / "hangar.sqlite3").exists()
        session = login(base, password_from(log))
        assert wait_healthy(session, base)["health_reason"] == "1 of 1 replicas healthy"
        os.kill(process.pid, signal.SIGTERM)
        process.wait(timeout=STOP_WITHIN_S)

        # The same keys next time: the session stays valid, secrets still decrypt.
        process, log = start(data_dir, port, **services)
        wait_for(f"{base}/healthz", process, log, timeout=180)
        assert {name: (data_dir / name).read_text() for name in keys} == keys
        fleet = session.get(f"{base}/fleet/", timeout=10)
        assert fleet.url == f"{base}/fleet/" and "demo-assistant" in fleet.text
        assert wait_healthy(session, base)["health"] == "Healthy"
    finally:
        stop(process)
        subprocess.run(["bash", "scripts/run", "stop"], cwd=ROOT, capture_output=True,
                       env=run_env(data_dir, port, **services), timeout=120)
        kill_local_agents(data_dir)
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres",
                             autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')

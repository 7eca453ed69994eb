"""Database connections stay bounded under the real server processes: uvicorn
serving many concurrent API clients, a prefork and a solo Celery worker, and
beat. What each process holds is read from PostgreSQL's ``pg_stat_activity``
(by the ``application_name`` each process sets) while the load runs."""
from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import psycopg
import pytest
import requests
from django.db import connection

from deployments import actions
from deployments.audit import Actor
from deployments.models import Deployment, Membership

from .factories import (
    AgentFactory,
    DeploymentFactory,
    TargetFactory,
    TeamFactory,
    UserFactory,
    VersionFactory,
)
from .processes import ROOT, database_env, free_port, start_web, stop, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

POOL_MAX = 4  # far below the 20 concurrent clients, so the bound means something
SLACK = 2  # the ingest pool's one connection and one being replaced


class Sampler:
    """Counts a database's backends by application name, every few ms, from a
    connection to another database (so the sampler is not counted)."""

    def __init__(self, dbname: str):
        self.dbname = dbname
        self.peak: Counter = Counter()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        params = connection.get_connection_params()
        with psycopg.connect(host=params["host"], port=params["port"], user=params["user"],
                             dbname="postgres", autocommit=True) as conn:
            while not self._stop.is_set():
                rows = conn.execute(
                    "SELECT application_name, count(*) FROM pg_stat_activity "
                    "WHERE datname = %s GROUP BY application_name", [self.dbname]).fetchall()
                for name, count in rows:
                    self.peak[name] = max(self.peak[name], count)
                self.samples += 1
                self._stop.wait(0.02)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def env_named(app_name: str, **extra: str) -> dict:
    env = database_env(**extra)
    env["DATABASE_URL"] += f"?application_name={app_name}"
    return env


@pytest.fixture
def token(db):
    team = TeamFactory(slug="load", name="Load")
    user = UserFactory(username="loader")
    Membership.objects.create(team=team, user=user, role="viewer")
    for n in range(15):
        AgentFactory(team=team, slug=f"agent-{n}", name=f"Agent {n}")
    _, plaintext = actions.create_token(team, name="load", scope="read", expires_at=None,
                                        actor=Actor(user=user))
    return plaintext


def test_uvicorn_serves_2000_concurrent_requests_within_its_pool(token, tmp_path):
    dbname = connection.get_connection_params()["dbname"]
    port, log = free_port(), tmp_path / "web.log"
    web = start_web(port, env_named("hangar-load-web", HANGAR_DB_POOL_MIN="1",
                                    HANGAR_DB_POOL_MAX=str(POOL_MAX),
                                    HANGAR_INGEST_CONNECTIONS="1",
                                    HANGAR_LOG_LEVEL="WARNING"), log)
    try:
        wait_for(f"http://127.0.0.1:{port}/healthz", web, log)
        url = f"http://127.0.0.1:{port}/api/v1/agents?limit=20"

        def client(n_requests: int) -> Counter:
            answers: Counter = Counter()
            with requests.Session() as session:
                session.headers["Authorization"] = f"Bearer {token}"
                for _ in range(n_requests):
                    response = session.get(url, timeout=60)
                    answers[response.status_code] += 1
                    if response.status_code == 200:
                        assert response.json()["count"] == 15
            return answers

        with Sampler(dbname) as sampler, ThreadPoolExecutor(20) as clients:
            totals = sum((f.result() for f in [clients.submit(client, 100)
                                                 for _ in range(20)]), Counter())
    finally:
        stop(web)
    assert totals == Counter({200: 2000}), (totals, log.read_text()[-3000:])
    assert sampler.samples > 10
    # The server did use the database, and never held more than its pool.
    assert 1 <= sampler.peak["hangar-load-web"] <= POOL_MAX + SLACK, sampler.peak


@contextmanager
def celery(*args: str, tmp_path, name: str, **extra: str):
    log = tmp_path / f"{name}.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "controlplane", *args, "--loglevel=INFO"],
        cwd=ROOT, env=env_named("unused", HANGAR_SWEEP_SECONDS="1", **extra),
        stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield process, log
    finally:
        stop(process)


@pytest.mark.parametrize("pool_args,processes", [
    (("--pool=prefork", "--concurrency=2"), 2),
    (("--pool=solo",), 1),
])
def test_workers_and_beat_bound_their_connections(pool_args, processes, tmp_path):
    import redis
    from django.conf import settings

    redis.Redis.from_url(settings.CELERY_BROKER_URL).delete("celery")
    dbname = connection.get_connection_params()["dbname"]
    team = TeamFactory()
    target = TargetFactory(team=team, kind="local")
    deployments = []
    for n in range(20):
        agent = AgentFactory(team=team, slug=f"idle-{n}")
        deployments.append(DeploymentFactory(
            agent=agent, version=VersionFactory(agent=agent, number=1), target=target,
            replicas=0))
    worker_max = 2
    with Sampler(dbname) as sampler, \
            celery("worker", *pool_args, tmp_path=tmp_path, name="worker",
                   HANGAR_WORKER_DB_POOL_MAX=str(worker_max)) as (worker, worker_log), \
            celery("beat", "--schedule", str(tmp_path / "beat-schedule"), tmp_path=tmp_path,
                   name="beat", HANGAR_WORKER_DB_POOL_MAX=str(worker_max)) as (beat, beat_log):
        # Beat's sweep (every second) reconciles every active deployment.
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            done = Deployment.objects.filter(pk__in=[d.pk for d in deployments],
                                             observed_generation=1).count()
            if done == len(deployments):
                break
            assert worker.poll() is None, worker_log.read_text()
            assert beat.poll() is None, beat_log.read_text()
            time.sleep(0.5)
        else:
            raise AssertionError(f"{done} of {len(deployments)} reconciled:\n"
                                 + worker_log.read_text()[-3000:])
        time.sleep(3)  # a few more sweeps under observation
    assert sampler.peak["hangar-worker"] >= 1, sampler.peak
    assert sampler.peak["hangar-worker"] <= processes * worker_max, sampler.peak
    assert sampler.peak["hangar-beat"] <= worker_max, sampler.peak
    assert not {name for name in sampler.peak if name.startswith("unused")}, sampler.peak

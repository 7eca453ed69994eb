"""Real pieces for rollouts on Docker (tests and bench/canary.py): the web
server (OTLP ingest: the agents' runs), the gateway, a driver that does what
the worker does (reconcile passes, the rollout tick, webhook deliveries), and
steady traffic through the gateway with what each request came to."""
from __future__ import annotations

import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import requests
from django.db import connection

from deployments.reconciler import reconcile_deployment
from rollouts import engine, notify
from rollouts.models import DeliveryState, Notification
from telemetry.budgets import WebhookError

from .processes import ROOT, database_env, free_port, start_web


class Servers:
    """uvicorn for the control plane (OTLP ingest) and for the gateway."""

    def __init__(self, log_dir, **gateway_env: str):
        env = database_env(HANGAR_LOG_LEVEL="WARNING")
        self.web_port = free_port()
        self.web = start_web(self.web_port, env, log_dir / "web.log")
        _wait_for(f"http://127.0.0.1:{self.web_port}/healthz", self.web, log_dir / "web.log")
        self.gateway_port = free_port()
        log = log_dir / "gateway.log"
        self.gateway = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "gateway.asgi:application", "--host",
             "127.0.0.1", "--port", str(self.gateway_port), "--lifespan", "on",
             "--no-access-log"], cwd=ROOT, stdout=log.open("ab"), stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**env, "HANGAR_GATEWAY_REFRESH_S": "1", "HANGAR_GATEWAY_CONCURRENT": "none",
                 "HANGAR_GATEWAY_RATE_PER_S": "none", "HANGAR_GATEWAY_TRACE_WAIT_S": "1",
                 **gateway_env})
        _wait_for(f"http://127.0.0.1:{self.gateway_port}/healthz", self.gateway, log)

    @property
    def web_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def gw(self, path: str) -> str:
        return f"http://127.0.0.1:{self.gateway_port}/gw/{path.lstrip('/')}"


def _wait_for(url: str, process, log, timeout: float = 120) -> None:
    """Until ``url`` answers 200, patient with a loaded machine (slow answers)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{process.args} exited early:\n" + log.read_text())
        try:
            if requests.get(url, timeout=10).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} did not answer:\n" + log.read_text()[-3000:])


class Driver(threading.Thread):
    """What the Celery worker and beat do, in a loop: a reconcile pass, the
    rollout tick (and the advance a timed pause schedules at its end),
    pending notifications."""

    def __init__(self, deployment_id: int, interval: float = 0.3):
        super().__init__(daemon=True, name="rollouts-driver")
        self.deployment_id, self.interval = deployment_id, interval
        self.stopping = threading.Event()
        self.errors: list[BaseException] = []

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                try:
                    reconcile_deployment(self.deployment_id)
                    engine.advance(self.deployment_id)
                    for note_id in Notification.objects.filter(
                            state__in=(DeliveryState.PENDING, DeliveryState.RETRYING)
                    ).values_list("pk", flat=True):
                        try:
                            notify.deliver(note_id)
                        except WebhookError:
                            pass
                except Exception as exc:  # noqa: BLE001 - reported by the test
                    self.errors.append(exc)
                    time.sleep(1)
                # As the worker's countdown task does: a timed pause ends on time.
                due = engine.due_in(self.deployment_id)
                self.stopping.wait(self.interval if due is None else
                                   min(self.interval, due + 0.02))
        finally:
            connection.close()

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=120)


@dataclass
class Answer:
    started: float
    ended: float
    status: int  # 0: no answer (connection error)
    replica: str
    detail: str = ""


@dataclass
class Traffic:
    """``clients`` threads calling ``url`` in a loop until stopped."""

    url: str
    headers: dict
    clients: int = 4
    answers: list[Answer] = field(default_factory=list)

    def __post_init__(self):
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._loop, daemon=True)
                        for _ in range(self.clients)]
        self.lock = threading.Lock()

    def start(self) -> Traffic:
        for t in self.threads:
            t.start()
        return self

    def _loop(self) -> None:
        session = requests.Session()
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                r = session.post(self.url, json={"input": "how are the canaries today?"},
                                 headers=self.headers, timeout=60)
                answer = Answer(started, time.monotonic(), r.status_code,
                                r.headers.get("x-hangar-replica", ""),
                                "" if r.status_code == 200 else r.text[:200])
            except requests.RequestException as exc:
                answer = Answer(started, time.monotonic(), 0, "", str(exc)[:200])
                time.sleep(0.1)
            with self.lock:
                self.answers.append(answer)

    def stop(self) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(timeout=90)

    def since(self, moment: float) -> list[Answer]:
        with self.lock:
            return [a for a in self.answers if a.started >= moment]


def wait_until(check, *, timeout: float, what: str, driver: Driver | None = None):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if driver is not None and driver.errors:
            raise driver.errors[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)

"""Rollout notifications are retried: a team hook whose receiver (a real HTTP
server on 127.0.0.1) fails first and then answers gets the event once, sent
by a real Celery worker with its backoff; one that never answers well is
given up after ``MAX_ATTEMPTS`` — and what happened is what the hook's
notification list in the API says."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import redis
from django.conf import settings as django_settings
from django.db import transaction

from deployments.audit import SYSTEM
from rollouts import actions, notify

from .processes import ROOT, database_env, stop

pytestmark = pytest.mark.django_db(transaction=True)


class Flaky:
    """Answers ``statuses`` in turn (then 200 for ever), keeping what it got."""

    def __init__(self, *statuses: int):
        self.statuses = list(statuses)
        self.received: list[tuple[int, dict]] = []
        flaky = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status = flaky.statuses.pop(0) if flaky.statuses else 200
                flaky.received.append((status, body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"


@pytest.fixture
def worker(tmp_path):
    redis.Redis.from_url(django_settings.CELERY_BROKER_URL).delete("celery")
    log = tmp_path / "worker.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "controlplane", "worker", "--pool=solo",
         "--loglevel=INFO"], cwd=ROOT, env=database_env(), stdout=log.open("ab"),
        stderr=subprocess.STDOUT, start_new_session=True)
    yield process, log
    stop(process)


def wait_for(check, what: str, worker, timeout: float = 90):
    process, log = worker
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        assert process.poll() is None, log.read_text()[-3000:]
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}:\n{log.read_text()[-3000:]}")


def test_a_failing_receiver_gets_the_event_once_it_answers(world, worker):
    flaky, broken = Flaky(500, 503), Flaky(*[500] * 10)
    ok = actions.create_hook(world.team, actor=SYSTEM, name="ops", url=flaky.url)
    bad = actions.create_hook(world.team, actor=SYSTEM, name="broken", url=broken.url)
    with transaction.atomic():  # the verb's transaction: sent after commit
        notify.send(world.deployment, None, "rollout.paused",
                    "rollout 1 paused at 25%: waiting for promotion")

    # Twice refused, then delivered on the third attempt — once.
    wait_for(lambda: [s for s, _ in flaky.received] == [500, 503, 200], "three attempts",
             worker)
    assert all(body["event"] == "rollout.paused" for _, body in flaky.received)
    viewer = world.client("viewer")
    sent = viewer.get(f"/api/v1/rollout-hooks/{ok.pk}/notifications").json()
    [item] = sent["items"]
    assert (item["state"], item["attempts"]) == ("sent", 3)
    assert item["status"] == "sent (HTTP 200) on attempt 3"
    assert item["payload"] == flaky.received[-1][1]

    # Never answering well: given up after MAX_ATTEMPTS, saying so.
    def given_up():
        items = viewer.get(f"/api/v1/rollout-hooks/{bad.pk}/notifications").json()["items"]
        return items and items[0]["state"] == "failed" and items[0]
    item = wait_for(given_up, "the broken hook given up", worker, timeout=180)
    assert item["attempts"] == notify.MAX_ATTEMPTS == len(broken.received)
    assert item["status"].startswith(f"failed after {notify.MAX_ATTEMPTS} attempts")
    time.sleep(1)
    assert [s for s, _ in flaky.received] == [500, 503, 200]  # nothing sent twice
    flaky.server.shutdown()
    broken.server.shutdown()

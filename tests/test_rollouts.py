"""Rollouts without processes: the state machine driven by hand-written
instance rows and runs (what the reconciler and telemetry write), through the
API an operator uses — canary steps, analysis (absolute and relative to
stable), inconclusive → paused, abort with the reason, retry, undo to stable,
promotion; the gateway's exact split and preview path; notifications to a
real local webhook (generic and Slack-compatible) with what was sent."""
from __future__ import annotations

import json
import threading
import uuid
from collections import Counter
from datetime import timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.utils import timezone

from deployments import actions as registry
from deployments.audit import SYSTEM
from deployments.models import AuditEvent, DeploymentEvent, Instance
from rollouts import engine, notify
from rollouts.models import Notification, Rollout
from telemetry.models import Run

from .factories import VersionFactory

pytestmark = pytest.mark.django_db

STEPS = [{"set_weight": 20},
         {"analysis": {"interval_s": 1, "count": 1, "min_runs": 5, "window_s": 60,
                       "metrics": [{"name": "error_rate", "max": 0.1},
                                   {"name": "cost_per_run", "max_ratio": 1.5}]}},
         {"set_weight": 100}]


def api(client, method, path, body=None):
    kwargs = {"data": json.dumps(body), "content_type": "application/json"} \
        if body is not None else {}
    return getattr(client, method)(f"/api/v1{path}", **kwargs)


def ready(deployment, name, revision):
    return Instance.objects.create(deployment=deployment, target=deployment.target, name=name,
                                   address="127.0.0.1:1", phase="running", health="Healthy",
                                   version=revision.version, revision=revision)


def runs(deployment, instance, count, *, errors=0, cost="0.001", tokens=20):
    now = timezone.now()
    for i in range(count):
        Run.objects.create(team_id=deployment.agent.team_id, agent_id=deployment.agent_id,
                           deployment_id=deployment.pk, trace_id=uuid.uuid4(),
                           instance=instance, name="invoke_agent",
                           status="error" if i < errors else "ok", started_at=now,
                           duration_ms=40 + i, input_tokens=tokens // 2,
                           output_tokens=tokens - tokens // 2, cost_usd=Decimal(cost),
                           root_span_id=1, span_count=2)


def due(deployment):
    """The next measurement is due now (instead of waiting for its interval)."""
    rollout = engine.latest(deployment.pk)
    for state in rollout.analysis_state.values():
        state["next_at"] = 0
    Rollout.objects.filter(pk=rollout.pk).update(analysis_state=rollout.analysis_state)


class Receiver:
    def __init__(self):
        self.bodies: list[dict] = []
        received = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.server.shutdown()


def test_canary_from_the_api(world, receiver):
    d = world.deployment
    d.replicas = 2
    d.save(update_fields=["replicas"])
    admin, operator, viewer = (world.client(w) for w in ("admin", "operator", "viewer"))
    base = f"/deployments/{d.pk}/rollout"

    # Bad input: a clear 4xx naming the step; nothing to promote is a 409.
    bad = api(operator, "put", f"{base}/strategy", {"strategy": "canary", "steps": [
        {"set_weight": 10}, {"pause": {"duration_s": -3}}]})
    assert bad.status_code == 422 and "steps[1].pause.duration_s" in bad.json()["detail"]
    bad = api(operator, "put", f"{base}/strategy", {"strategy": "canary", "steps": [
        {"set_weight": 10}, {"analysis": {"metrics": [{"name": "vibes", "max": 1}]}}]})
    assert bad.status_code == 422 and "steps[1].analysis.metrics[0].name" in bad.json()["detail"]
    for verb in ("promote", "abort", "retry"):
        answer = api(operator, "post", f"{base}/{verb}", {} if verb == "promote" else None)
        assert answer.status_code == 409 and "no rollout" in answer.json()["detail"], verb
    assert api(viewer, "put", f"{base}/strategy", {"strategy": "canary",
                                                   "steps": STEPS}).status_code == 403
    assert api(world.client("outsider"), "get", base).status_code == 404

    hook = api(admin, "post", f"/teams/{world.team.pk}/rollout-hooks",
               {"name": "ops", "url": receiver.url})
    assert hook.status_code == 201, hook.content
    api(admin, "post", f"/teams/{world.team.pk}/rollout-hooks",
        {"name": "slack", "url": receiver.url, "format": "slack",
         "events": ["rollout.aborted"]})
    ok = api(operator, "put", f"{base}/strategy", {"strategy": "canary", "steps": STEPS})
    assert ok.status_code == 200 and ok.json()["policy"]["steps"][1]["analysis"]["count"] == 1

    stable = d.revision
    ready(d, "s-1", stable)
    ready(d, "s-2", stable)
    registry.update_deployment(d, version=world.spare_version, actor=SYSTEM)
    d.refresh_from_db()
    canary_rev = d.revision

    # The reconciler's question starts the rollout (and the replica its first
    # weight needs, at 0 % until then); the first step sets 20 %.
    split = engine.split_for(d, 2)
    assert split.current == 1 and split.others == {stable.pk: 2}
    assert engine.weights()[d.pk] == ({stable.pk: 100, d.revision_id: 0}, None)
    engine.advance(d.pk)
    rollout = engine.latest(d.pk)
    assert rollout.weight == 20 and "waiting for canary replicas" in rollout.message
    split = engine.split_for(d, 2)
    assert (split.current, split.others) == (1, {stable.pk: 2})  # stable keeps all its replicas
    assert engine.weights()[d.pk] == ({stable.pk: 80, canary_rev.pk: 20}, None)
    ready(d, "c-1", canary_rev)

    # Not enough canary runs: inconclusive → paused for a person.
    engine.advance(d.pk)
    due(d)
    runs(d, "s-1", 20)
    runs(d, "c-1", 2)
    engine.advance(d.pk)
    status = api(viewer, "get", base).json()
    assert status["rollout"]["phase"] == "Paused", status["rollout"]
    assert "inconclusive: canary has 2 run(s) in the window, 5 needed" in \
        status["rollout"]["message"]
    assert status["measurements"][-1]["verdict"] == "inconclusive"
    assert engine.split_for(d, 2).health == "Suspended"

    # Abort by hand, then retry from the first step.
    assert api(viewer, "post", f"{base}/abort").status_code == 403
    aborted = api(operator, "post", f"{base}/abort")
    assert aborted.status_code == 200 and aborted.json()["rollout"]["phase"] == "Degraded"
    assert engine.weights()[d.pk] == ({stable.pk: 100}, None)
    assert api(operator, "post", f"{base}/abort").status_code == 409
    retried = api(operator, "post", f"{base}/retry")
    assert retried.status_code == 200 and retried.json()["rollout"]["phase"] == "Progressing"

    # ×5 the cost per run (same errors): aborted automatically, with the reason.
    engine.advance(d.pk)
    engine.advance(d.pk)
    due(d)
    runs(d, "s-1", 20)
    runs(d, "c-1", 10, cost="0.005")
    engine.advance(d.pk)
    rollout = engine.latest(d.pk)
    assert rollout.phase == "Degraded" and rollout.aborted
    assert "rollout aborted: cost per run $0.0" in rollout.message
    assert "> 1.5 × stable $0.001" in rollout.message, rollout.message
    split = engine.split_for(d, 2)
    assert (split.current, split.health) == (0, "Degraded")
    assert split.reason.startswith("rollout aborted: cost per run")
    assert DeploymentEvent.objects.filter(deployment=d, reason="RolloutAborted",
                                          message__contains="cost per run").exists()
    assert AuditEvent.objects.filter(action="rollout.abort", actor_label="rollouts").exists()

    # Undo to the stable revision: immediate, no steps, nothing degraded.
    undone = api(operator, "post", f"{base}/undo", {"revision": stable.number})
    assert undone.status_code == 200, undone.content
    d.refresh_from_db()
    assert d.revision.digest == stable.digest and d.revision.number == 3
    assert engine.split_for(d, 2) is None
    assert set(Instance.objects.filter(revision=d.revision).values_list("name", flat=True)) \
        == {"s-1", "s-2"}
    assert d.pk not in engine.weights()
    assert api(operator, "post", f"{base}/undo", {"revision": 99}).status_code == 404

    # A good revision promotes through its steps to 100 %.
    v3 = VersionFactory(agent=d.agent, number=3, env={"GOOD": "1"})
    registry.update_deployment(d, version=v3, actor=SYSTEM)
    d.refresh_from_db()
    engine.split_for(d, 2)
    engine.advance(d.pk)
    ready(d, "g-1", d.revision)
    engine.advance(d.pk)
    due(d)
    runs(d, "s-1", 20)
    runs(d, "g-1", 10)
    engine.advance(d.pk)
    rollout = engine.latest(d.pk)
    assert rollout.weight == 100 and "waiting for canary replicas" in rollout.message
    ready(d, "g-2", d.revision)
    engine.advance(d.pk)
    rollout = engine.latest(d.pk)
    assert rollout.phase == "Healthy" and rollout.finished and rollout.number == 2
    assert engine.split_for(d, 2) is None
    weights = list(DeploymentEvent.objects.filter(deployment=d, reason="RolloutWeight")
                   .order_by("at", "id").values_list("message", flat=True))
    assert [w.rsplit(" ", 1)[1] for w in weights] == ["20%", "20%", "20%", "100%"]

    # Notifications: rows with exactly what is sent, delivered to the webhook.
    notes = list(Notification.objects.order_by("pk"))
    assert [n.event for n in notes if n.hook.name == "ops"] == [
        "rollout.started", "rollout.paused", "rollout.aborted", "rollout.aborted",
        "rollout.started", "rollout.promoted"]
    assert [n.event for n in notes if n.hook.name == "slack"] == ["rollout.aborted"] * 2
    for note in notes:
        assert notify.deliver(note.pk) == "sent"
    assert receiver.bodies == [n.payload for n in notes]
    slack = next(b for b in receiver.bodies if "blocks" in b and "cost per run" in b["text"])
    assert slack["text"].startswith("[acme/support-bot@production] rollout.aborted: rollout "
                                    "aborted: cost per run")
    generic = next(b for b in receiver.bodies if b.get("event") == "rollout.aborted"
                   and "cost" in b["text"])
    assert generic["rollout"]["stable_revision"] == stable.number
    assert generic["deployment"]["agent"] == "support-bot"
    hook_id = hook.json()["id"]
    sent = api(viewer, "get", f"/rollout-hooks/{hook_id}/notifications").json()
    assert sent["count"] == 6 and sent["items"][0]["state"] == "sent"
    assert sent["items"][0]["payload"]["event"] == "rollout.promoted"
    assert api(world.client("outsider"), "get",
               f"/rollout-hooks/{hook_id}/notifications").status_code == 404


def test_inconclusive_step_resumes_on_promote_and_timed_pause_expires(world):
    d = world.deployment
    stable = d.revision
    ready(d, "s-1", stable)
    from rollouts import actions

    actions.set_strategy(d, actor=SYSTEM, strategy="canary", steps_=[
        {"set_weight": 50}, {"pause": {"duration_s": 1}}, {"pause": {}}, {"set_weight": 100}])
    registry.update_deployment(d, version=world.spare_version, actor=SYSTEM)
    d.refresh_from_db()
    engine.split_for(d, 1)
    engine.advance(d.pk)
    ready(d, "c-1", d.revision)
    engine.advance(d.pk)
    rollout = engine.latest(d.pk)
    assert rollout.phase == "Paused" and rollout.pause_until is not None
    Rollout.objects.filter(pk=rollout.pk).update(pause_until=timezone.now() - timedelta(1))
    engine.advance(d.pk)
    rollout = engine.latest(d.pk)
    assert rollout.phase == "Paused" and rollout.pause_until is None
    assert "pause until promoted" in rollout.message
    actions.promote(d, actor=SYSTEM)
    engine.advance(d.pk)  # 100 %: the canary replica it needs is already there
    engine.advance(d.pk)
    assert engine.latest(d.pk).phase == "Healthy"


def test_blue_green_preview_then_switch(world):
    from rollouts import actions

    d = world.deployment
    stable = d.revision
    ready(d, "blue-1", stable)
    actions.set_strategy(d, actor=SYSTEM, strategy="blue_green", scale_down_delay_s=30)
    registry.update_deployment(d, version=world.spare_version, actor=SYSTEM)
    d.refresh_from_db()
    split = engine.split_for(d, 1)
    assert (split.current, split.others) == (1, {stable.pk: 1})
    ready(d, "green-1", d.revision)
    engine.advance(d.pk)
    rollout = engine.latest(d.pk)
    assert rollout.phase == "Paused" and "waiting for promotion" in rollout.message
    assert engine.weights()[d.pk] == ({stable.pk: 100}, d.revision.pk)
    actions.promote(d, actor=SYSTEM)
    assert engine.weights()[d.pk] == ({d.revision.pk: 100}, None)
    split = engine.split_for(d, 1)
    assert split.others == {stable.pk: 1} and "kept" in split.reason  # scale-down delay
    actions.abort(d, actor=SYSTEM)  # within the delay: straight back to blue
    assert engine.weights()[d.pk] == ({stable.pk: 100}, None)


def test_the_gateway_splits_exactly_by_weight():
    from gateway.balancer import Replica
    from gateway.routes import Route
    from gateway.split import Weighted, pool, preview_path

    w = Weighted({1: 95, 2: 5})
    picks = [w.choose({1, 2}) for _ in range(1000)]
    assert picks.count(2) == 50
    assert all(not (a == b == 2) for a, b in zip(picks, picks[1:], strict=False))
    assert Weighted({1: 0, 2: 100}).choose({1}) is None  # nothing it names is up
    route = Route(key=("t", "a", "e"), team_id=1, deployment_ids=[1],
                  replicas=[Replica("s", "x:1", 1, revision_id=1),
                            Replica("c", "x:2", 1, revision_id=2),
                            Replica("p", "x:3", 1, revision_id=3)],
                  weights={1: 90, 2: 10}, preview=3)
    route.weighted = Weighted(route.weights)
    served = [pool(route)[0].name for _ in range(100)]
    assert served.count("c") == 10 and served.count("s") == 90 and "p" not in served
    assert [r.name for r in pool(route, preview=True)] == ["p"]
    assert preview_path("/preview/invoke") == (True, "/invoke")
    assert preview_path("/previews") == (False, "/previews")


def test_the_rollout_page_is_scoped(world):
    from django.test import Client

    from rollouts import actions

    d = world.deployment
    ready(d, "s-1", d.revision)
    actions.set_strategy(d, actor=SYSTEM, strategy="canary", steps_=STEPS)
    registry.update_deployment(d, version=world.spare_version, actor=SYSTEM)
    d.refresh_from_db()
    engine.split_for(d, 1)
    engine.advance(d.pk)
    viewer, operator, outsider = Client(), Client(), Client()
    viewer.force_login(world.users["viewer"])
    operator.force_login(world.users["operator"])
    outsider.force_login(world.users["outsider"])
    page = viewer.get(f"/deployments/{d.pk}/rollout/")
    assert page.status_code == 200
    assert b"20%</span> canary" in page.content and b"Promote" not in page.content
    assert b"Promote" in operator.get(f"/deployments/{d.pk}/rollout/").content
    partial = viewer.get(f"/deployments/{d.pk}/rollout/", HTTP_HX_REQUEST="true")
    assert partial.content.lstrip().startswith(b'<section class="card" id="rollout"')
    assert outsider.get(f"/deployments/{d.pk}/rollout/").status_code == 404
    assert viewer.post(f"/deployments/{d.pk}/rollout/abort/").status_code == 403
    bad = operator.post(f"/deployments/{d.pk}/rollout/undo/", {"revision": "x1"})
    assert bad.status_code == 422 and b"is not a revision number" in bad.content
    assert operator.post(f"/deployments/{d.pk}/rollout/abort/").status_code == 302
    assert engine.latest(d.pk).aborted


def test_a_thread_stays_on_the_revision_of_its_first_request_until_the_rollout_ends():
    from gateway.balancer import Replica
    from gateway.routes import Route
    from gateway.split import Weighted, pool, thread_of

    def route(weights):
        r = Route(key=("t", "sticky", "e"), team_id=1, deployment_ids=[1],
                  replicas=[Replica("s", "x:1", 1, revision_id=1),
                            Replica("c", "x:2", 1, revision_id=2)], weights=weights)
        r.weighted = Weighted(weights)
        return r

    at_50 = route({1: 50, 2: 50})
    first = {f"thread-{i}": pool(at_50, thread=f"thread-{i}")[0].name for i in range(40)}
    assert sorted(first.values()).count("c") == 20  # new threads split by the weight
    # Every later request of a thread goes where its first one went, the weight
    # stepping on meanwhile (a reload: a new counter, the same rollout).
    for weights in ({1: 50, 2: 50}, {1: 10, 2: 90}, {1: 0, 2: 100}):
        stepped = route(weights)
        for thread, name in first.items():
            assert [pool(stepped, thread=thread)[0].name for _ in range(3)] == [name] * 3
    # Requests without a thread still follow the weight exactly.
    stepped = route({1: 10, 2: 90})
    assert [pool(stepped)[0].name for _ in range(10)].count("c") == 9
    # Its revision gone (no replica left): the thread moves, and stays on the new one.
    gone = route({1: 10, 2: 90})
    gone.replicas = [r for r in gone.replicas if r.name != "s"]
    moved = next(t for t, name in first.items() if name == "s")
    assert pool(gone, thread=moved)[0].name == "c"
    assert pool(route({1: 10, 2: 90}), thread=moved)[0].name == "c"
    # The rollout finished (one revision): every thread on it; an abort likewise.
    assert {pool(route({2: 100}), thread=t)[0].name for t in first} == {"c"}
    assert {pool(route({1: 100}), thread=t)[0].name for t in first} == {"s"}
    # A new rollout starts afresh.
    again = route({1: 50, 2: 50})
    assert sorted(pool(again, thread=t)[0].name for t in first).count("c") == 20
    assert thread_of({"x-session-id": " abc "}) == "abc" and thread_of({}) is None
    assert thread_of({"x-hangar-thread": "t1", "x-session-id": "s1"}) == "t1"


def test_a_batch_canary_splits_its_job_runs_by_the_weight(world):
    """Batch runs no replicas: the canary's share is of its job runs
    (``deployments.traffic.job_revision``, asked by the batch supervisor)."""
    from deployments import traffic
    from deployments.audit import Actor
    from deployments.models import JobRun

    from .factories import AgentFactory

    agent = AgentFactory(team=world.team, slug="nightly", pattern="batch")
    v1, v2 = (VersionFactory(agent=agent, number=n, port=None, env={"AGENT_MODE": "batch"})
              for n in (1, 2))
    d = registry.create_deployment(agent, version=v1, target=world.target, actor=SYSTEM)
    schedule = registry.create_schedule(d, {"name": "job", "cron": "*/5 * * * *"},
                                        Actor(user=None), now=timezone.now())
    stable = d.revision
    JobRun.objects.create(schedule=schedule, deployment=d, revision=stable,
                          occurrence=timezone.now(), status="succeeded", unit_name="job-1")
    assert traffic.job_revision(d, 1) is None  # no rollout: the current revision
    from rollouts import actions

    actions.set_strategy(d, actor=SYSTEM, strategy="canary", steps_=[
        {"set_weight": 25}, {"pause": {}}, {"set_weight": 50}, {"pause": {}}])
    registry.update_deployment(d, version=v2, actor=SYSTEM)
    d.refresh_from_db()
    split = engine.split_for(d, 0)
    assert (split.current, split.others) == (0, {stable.pk: 0})  # no replicas either way
    engine.advance(d.pk)
    rollout = engine.latest(d.pk)
    assert (rollout.weight, rollout.phase) == (25, "Paused")  # no replica to wait for

    def shares(ids):
        return Counter(traffic.job_revision(d, i) for i in ids)

    # Any stretch of consecutive runs splits close to the weight.
    for start in (1, 137, 5000):
        assert abs(shares(range(start, start + 100))[d.revision_id] - 25) <= 2
    at_25 = {i for i in range(1, 1001) if traffic.job_revision(d, i) == d.revision_id}
    actions.promote(d, actor=SYSTEM)
    engine.advance(d.pk)
    assert engine.latest(d.pk).weight == 50
    at_50 = {i for i in range(1, 1001) if traffic.job_revision(d, i) == d.revision_id}
    assert at_25 < at_50 and abs(len(at_50) - 500) <= 5  # a run on the canary stays there
    actions.abort(d, actor=SYSTEM)
    assert set(shares(range(1, 200))) == {stable.pk}

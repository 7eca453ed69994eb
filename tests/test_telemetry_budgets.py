"""Compute cost accrual, budgets crossing thresholds (alert, pause, scale to
zero), the audit trail naming the budget, reversal, webhooks, retention."""
from __future__ import annotations

import json
import threading
from datetime import timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, HTTPServer
from unittest import mock

import pytest
from django.conf import settings as django_settings
from django.utils import timezone

from deployments.audit import Actor
from deployments.models import AuditEvent, Deployment, Instance
from telemetry import budgets, cost, storage, tasks
from telemetry.models import Budget, BudgetEvent, ComputeCost, ComputeCursor, Run

from .factories import DeploymentFactory


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    monkeypatch.setattr(storage.ANNOUNCER, "finished", lambda *args: None)


def spend(world, usd: str, deployment=None):
    """Record compute spend for the team this hour."""
    deployment = deployment or world.deployment
    ComputeCost.objects.create(
        team_id=deployment.agent.team_id, agent_id=deployment.agent_id,
        deployment_id=deployment.pk, instance=f"i-{ComputeCost.objects.count()}",
        hour=timezone.now().replace(minute=0, second=0, microsecond=0), seconds=60,
        cpu=Decimal("1"), memory_mb=512, cost_usd=Decimal(usd))


def make_budget(world, thresholds, amount="10", agent=None, webhook_url=""):
    with mock.patch("telemetry.tasks.evaluate_budget.delay"):
        return budgets.create_budget(world.team, agent=agent, name=f"b{Budget.objects.count()}",
                                     amount_usd=Decimal(amount), thresholds=thresholds,
                                     webhook_url=webhook_url,
                                     actor=Actor(user=world.users["admin"], source="api"))


# Compute cost ---------------------------------------------------------------------------------


@pytest.fixture
def running(world):
    target = world.target
    target.price_cpu_hour, target.price_gib_hour = Decimal("0.04"), Decimal("0.005")
    target.save()
    version = world.version
    started = timezone.now().replace(minute=10, second=0, microsecond=0) - timedelta(hours=2)
    return Instance.objects.create(deployment=world.deployment, target=target, version=version,
                                   name="bot-1", phase="running", started_at=started)


def test_compute_cost_is_instance_seconds_times_target_prices(world, running):
    rate = Decimal("0.04") * Decimal(world.version.cpu) + Decimal("0.005") * (
        Decimal(world.version.memory_mb) / 1024)
    now = running.started_at + timedelta(hours=2)
    accrued = cost.accrue_compute(now)
    assert [(a.deployment_id, a.team_id) for a in accrued] == [(world.deployment.pk,
                                                                world.team.pk)]
    total = sum(ComputeCost.objects.values_list("cost_usd", flat=True))
    assert total == pytest.approx(rate * 2, abs=Decimal("1e-9"))
    # Split into hour buckets: 50 min, 60 min, 10 min.
    assert sorted(ComputeCost.objects.values_list("seconds", flat=True)) == [600, 3000, 3600]
    # Accruing again at the same instant adds nothing (the cursor moved).
    assert cost.accrue_compute(now) == []
    assert sum(ComputeCost.objects.values_list("cost_usd", flat=True)) == total
    # Half an hour later: half an hour more.
    cost.accrue_compute(now + timedelta(minutes=30))
    later = sum(ComputeCost.objects.values_list("cost_usd", flat=True))
    assert later - total == pytest.approx(rate / 2, abs=Decimal("1e-9"))


def test_stopped_and_unstarted_instances_cost_nothing(world, running):
    running.phase = "exited"
    running.save()
    Instance.objects.create(deployment=world.deployment, name="bot-2", phase="pending")
    assert cost.accrue_compute() == []
    assert not ComputeCost.objects.exists()


def test_a_concurrent_accrual_never_counts_twice(world, running):
    now = running.started_at + timedelta(hours=1)
    cost.accrue_compute(now)
    first = sum(ComputeCost.objects.values_list("cost_usd", flat=True))
    # Another worker read the old cursor, then lost the compare-and-set.
    with mock.patch.object(ComputeCursor.objects, "filter") as cas:
        cas.return_value.update.return_value = 0
        cost.accrue_compute(now + timedelta(hours=1))
    assert sum(ComputeCost.objects.values_list("cost_usd", flat=True)) == first


def test_accrual_task_publishes_cost_ticks(world, running, django_capture_on_commit_callbacks):
    with mock.patch("telemetry.tasks.publish") as publish:
        assert tasks.accrue_compute() == 1
    publish.assert_called_once()
    args, kwargs = publish.call_args
    assert args[:2] == (world.team.pk, "cost.tick")
    assert kwargs == {"deployment_id": world.deployment.pk}


# Budgets ----------------------------------------------------------------------------------------


def test_crossing_a_pause_threshold_pauses_and_the_audit_log_names_the_budget(world):
    other = DeploymentFactory(agent=world.spare_agent, target=world.target)
    budget = make_budget(world, [{"percent": 80, "action": "alert"},
                                 {"percent": 100, "action": "pause"}])
    spend(world, "7.99")
    assert budgets.evaluate(budget) == []
    spend(world, "0.02")  # 8.01 of 10: the alert
    (alert,) = budgets.evaluate(budget)
    assert alert.action == "alert" and alert.affected == []
    assert Deployment.objects.get(pk=world.deployment.pk).state == "active"
    spend(world, "2.50")  # 10.51: pause the team's deployments
    with mock.patch("telemetry.budgets.publish", wraps=budgets.publish) as publish:
        (pause,) = budgets.evaluate(budget)
    # The dashboards hear of it (the banner), with what was done.
    assert mock.call(world.team.pk, "budget.triggered",
                     {"budget_id": budget.pk, "budget_event_id": pause.pk, "percent": 100,
                      "action": "pause"}) in publish.call_args_list
    assert pause.percent == 100 and pause.spent_usd == Decimal("10.51")
    for deployment in (world.deployment, other):
        deployment.refresh_from_db()
        assert deployment.state == "paused"
    paused = AuditEvent.objects.filter(action="deployment.pause").order_by("id")
    assert [e.object_id for e in paused] == [str(world.deployment.pk), str(other.pk)]
    for event in paused:
        assert event.source == "budget" and event.actor is None
        assert event.actor_label == f"budget '{budget.name}' #{budget.pk}"
        assert event.before["state"] == "active" and event.after["state"] == "paused"
    trigger = AuditEvent.objects.get(action="budget.trigger", after__percent=100)
    assert trigger.team_id == world.team.pk and trigger.object_type == "budgetevent"
    assert trigger.after["deployments"] == [world.deployment.pk, other.pk]
    # A threshold fires once a month.
    assert budgets.evaluate(budget) == []
    assert BudgetEvent.objects.count() == 2


def test_an_agent_budget_only_touches_that_agent(world):
    other = DeploymentFactory(agent=world.spare_agent, target=world.target)
    budget = make_budget(world, [{"percent": 100, "action": "pause"}], amount="1",
                         agent=world.agent)
    spend(world, "5", deployment=other)  # the other agent's spend does not count
    assert budgets.evaluate(budget) == []
    spend(world, "1")
    (event,) = budgets.evaluate(budget)
    assert [a["deployment_id"] for a in event.affected] == [world.deployment.pk]
    other.refresh_from_db()
    assert other.state == "active"


def test_scale_to_zero_and_revert_from_the_api(world):
    world.deployment.replicas = 3
    world.deployment.save()
    budget = make_budget(world, [{"percent": 100, "action": "scale_to_zero"}], amount="1")
    spend(world, "1.5")
    (event,) = budgets.evaluate(budget)
    world.deployment.refresh_from_db()
    assert world.deployment.replicas == 0 and world.deployment.state == "active"
    scaled = AuditEvent.objects.get(action="deployment.scale")
    assert scaled.source == "budget" and scaled.before["replicas"] == 3
    path = f"/api/v1/budget-events/{event.pk}/revert"
    assert world.client("viewer").post(path).status_code == 403
    assert world.client("outsider").post(path).status_code == 404
    response = world.client("operator").post(path)
    assert response.status_code == 200, response.content
    data = response.json()
    assert data["reverted_by"] == "operator" and data["affected"][0]["revert"] == "restored"
    world.deployment.refresh_from_db()
    assert world.deployment.replicas == 3
    back = AuditEvent.objects.filter(action="deployment.scale").latest("id")
    assert back.actor_label.startswith("operator") and back.after["replicas"] == 3
    assert AuditEvent.objects.filter(action="budget.revert").count() == 1
    assert world.client("operator").post(path).status_code == 409  # once
    # Still over budget: the threshold does not fire again this month...
    assert budgets.evaluate(budget) == []
    # ...unless the amount is raised and crossed again.
    with mock.patch("telemetry.tasks.evaluate_budget.delay"):
        budget = budgets.update_budget(budget, amount_usd=Decimal("2"), actor=Actor(user=None))
    assert budgets.evaluate(budget) == []
    spend(world, "1")
    assert len(budgets.evaluate(budget)) == 1


def test_revert_leaves_alone_what_someone_changed_since(world):
    from deployments import actions

    budget = make_budget(world, [{"percent": 100, "action": "pause"}], amount="1")
    spend(world, "2")
    (event,) = budgets.evaluate(budget)
    actions.update_deployment(world.deployment, state="stopped",
                              actor=Actor(user=world.users["admin"]))
    event = budgets.revert_budget_event(event, actor=Actor(user=world.users["admin"]))
    assert event.affected[0]["revert"] == "changed since; left as it is"
    world.deployment.refresh_from_db()
    assert world.deployment.state == "stopped"


def test_resuming_by_hand_also_reverses_a_pause(world):
    budget = make_budget(world, [{"percent": 100, "action": "pause"}], amount="1")
    spend(world, "2")
    budgets.evaluate(budget)
    response = world.client("operator").patch(
        f"/api/v1/deployments/{world.deployment.pk}", data={"state": "active"},
        content_type="application/json")
    assert response.status_code == 200 and response.json()["state"] == "active"
    assert budgets.evaluate(budget) == []


def test_disabled_budgets_do_nothing(world):
    budget = make_budget(world, [{"percent": 1, "action": "pause"}], amount="1")
    budget.enabled = False
    budget.save()
    spend(world, "5")
    assert budgets.evaluate_all() == 0
    world.deployment.refresh_from_db()
    assert world.deployment.state == "active"


def test_llm_spend_counts_towards_budgets(world):
    from django.test import Client

    from .otlp_support import agent_trace, export, give_token, post

    token = give_token(world.deployment)
    assert post(Client(), token, export(agent_trace(model="gpt-4o",
                                                     calls=((400_000, 10_000),)))).status_code \
        == 200
    llm = Run.objects.get().cost_usd
    assert llm > Decimal("1")
    budget = make_budget(world, [{"percent": 100, "action": "alert"}], amount="1")
    (event,) = budgets.evaluate(budget)
    assert event.spent_usd == llm


# Webhooks ----------------------------------------------------------------------------------------


class Hook(BaseHTTPRequestHandler):
    received: list = []
    status = 200

    def do_POST(self):
        length = int(self.headers["Content-Length"])
        Hook.received.append(json.loads(self.rfile.read(length)))
        self.send_response(Hook.status)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def hook():
    Hook.received, Hook.status = [], 200
    server = HTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_alerts_post_to_the_webhook(world, hook, django_capture_on_commit_callbacks):
    url = f"http://127.0.0.1:{hook.server_port}/hangar"
    budget = make_budget(world, [{"percent": 50, "action": "alert"}], amount="2",
                         webhook_url=url)
    spend(world, "1.25")
    with mock.patch("telemetry.tasks.send_budget_webhook.delay") as delay, \
            django_capture_on_commit_callbacks(execute=True):
        (event,) = budgets.evaluate(budget)
    delay.assert_called_once_with(event.pk)
    tasks.send_budget_webhook.apply(args=(event.pk,))
    (payload,) = Hook.received
    assert payload["event"] == "budget.threshold" and payload["percent"] == 50
    assert payload["budget"] == {"id": budget.pk, "name": budget.name, "team": "acme",
                                 "agent": None, "amount_usd": "2.00"}
    assert Decimal(payload["spent_usd"]) == Decimal("1.25")
    event.refresh_from_db()
    assert event.webhook_status == "sent (HTTP 200)"
    # The URL is stored encrypted and never shown.
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT webhook_url FROM telemetry_budget WHERE id = %s", [budget.pk])
        assert cursor.fetchone()[0].startswith("fernet:")


@pytest.mark.parametrize("url", ["http://127.0.0.1:{port}/hangar", "http://localhost:{port}/x",
                                 "http://169.254.169.254:{port}/latest/meta-data"])
def test_webhooks_to_internal_addresses_are_refused(world, hook, settings, url):
    """A team admin cannot make the worker call loopback, private or cloud
    metadata addresses (unless the operator allows private addresses)."""
    settings.HANGAR_WEBHOOK_ALLOW_PRIVATE = False
    budget = make_budget(world, [{"percent": 50, "action": "alert"}],
                         webhook_url=url.format(port=hook.server_port))
    spend(world, "6.00")
    with mock.patch("telemetry.tasks.send_budget_webhook.delay"):
        (event,) = budgets.evaluate(budget)
    tasks.send_budget_webhook.apply(args=(event.pk,))
    event.refresh_from_db()
    assert event.webhook_status.startswith("refused: ") and "not a public address" in \
        event.webhook_status
    assert Hook.received == []


def test_a_failing_webhook_is_retried_then_recorded(world, hook):
    Hook.status = 500
    url = f"http://127.0.0.1:{hook.server_port}/hangar"
    budget = make_budget(world, [{"percent": 50, "action": "alert"}], amount="2",
                         webhook_url=url)
    spend(world, "1.5")
    with mock.patch("telemetry.tasks.send_budget_webhook.delay"):
        (event,) = budgets.evaluate(budget)
    with pytest.raises(budgets.WebhookError):
        budgets.post_webhook(event)
    with mock.patch.object(tasks.send_budget_webhook, "retry", side_effect=RuntimeError("retry")):
        with pytest.raises(RuntimeError):
            tasks.send_budget_webhook.run(event.pk)
    event.refresh_from_db()
    assert event.webhook_status == "retrying: HTTP 500"


def stale(event, **fields) -> None:
    """Make ``event`` look older than the resend delay (backdate its times)."""
    long_ago = timezone.now() - timedelta(
        seconds=django_settings.HANGAR_WEBHOOK_RESEND_AFTER_S + 60)
    BudgetEvent.objects.filter(pk=event.pk).update(
        at=long_ago, **{k: long_ago if v is None else v for k, v in fields.items()})


def test_a_webhook_whose_enqueue_was_lost_is_resent_by_beat_once(
        world, hook, django_capture_on_commit_callbacks):
    """Redis was down when the threshold fired: the notification stays pending;
    beat enqueues it again after a while, and however many copies are enqueued
    (a late original, two beat rounds) the webhook receives it once."""
    from kombu.exceptions import OperationalError as BrokerError

    url = f"http://127.0.0.1:{hook.server_port}/hangar"
    budget = make_budget(world, [{"percent": 50, "action": "alert"}], amount="2",
                         webhook_url=url)
    spend(world, "1.25")
    with mock.patch.object(tasks.send_budget_webhook, "delay",
                           side_effect=BrokerError("Error 111 connecting")), \
            django_capture_on_commit_callbacks(execute=True):
        (event,) = budgets.evaluate(budget)
    event.refresh_from_db()
    assert (event.webhook_state, event.webhook_status) == ("pending", "pending")
    assert Hook.received == []

    enqueued = []
    with mock.patch.object(tasks.send_budget_webhook, "delay", side_effect=enqueued.append):
        assert tasks.resend_budget_webhooks() == 0  # just fired: it may still be on its way
        stale(event)
        assert tasks.resend_budget_webhooks() == 1
        assert tasks.resend_budget_webhooks() == 1  # not sent yet: enqueued again
    assert enqueued == [event.pk, event.pk]
    outcomes = [tasks.send_budget_webhook.apply(args=(pk,)).get() for pk in enqueued]
    assert outcomes == ["sent", None]
    assert len(Hook.received) == 1 and Hook.received[0]["percent"] == 50
    event.refresh_from_db()
    assert (event.webhook_state, event.webhook_status) == ("sent", "sent (HTTP 200)")
    assert event.webhook_attempts == 1
    stale(event)
    assert budgets.webhooks_to_resend() == []  # done is done


def test_a_send_in_flight_is_not_sent_twice_unless_its_worker_died(world, hook):
    """A claimed attempt (another worker is posting) is neither resent by beat
    nor sent by a duplicate task; a claim older than the resend delay belongs
    to a worker that died, and is taken over; the dead worker's late outcome
    does not overwrite the new one."""
    url = f"http://127.0.0.1:{hook.server_port}/hangar"
    budget = make_budget(world, [{"percent": 50, "action": "alert"}], amount="2",
                         webhook_url=url)
    spend(world, "1.5")
    with mock.patch("telemetry.tasks.send_budget_webhook.delay"):
        (event,) = budgets.evaluate(budget)
    first = budgets.claim_webhook(event.pk)
    assert first is not None and first.webhook_state == "sending"
    assert budgets.claim_webhook(event.pk) is None
    assert tasks.send_budget_webhook.apply(args=(event.pk,)).get() is None
    stale(event, webhook_attempt_at=timezone.now())  # fired long ago, claimed just now
    assert budgets.webhooks_to_resend() == []
    assert Hook.received == []

    stale(event, webhook_attempt_at=None)  # the claim is old too: its worker died
    assert budgets.webhooks_to_resend() == [event.pk]
    assert tasks.send_budget_webhook.apply(args=(event.pk,)).get() == "sent"
    assert len(Hook.received) == 1
    assert budgets.finish_webhook(first, "failed", "failed: worker died") is False
    event.refresh_from_db()
    assert (event.webhook_state, event.webhook_attempts) == ("sent", 2)


def test_a_retry_that_was_lost_is_resent_and_attempts_are_bounded(world, hook):
    """Celery could not schedule the retry (Redis down): beat resends it; a
    webhook that keeps failing ends "failed" after WEBHOOK_MAX_ATTEMPTS."""
    Hook.status = 500
    url = f"http://127.0.0.1:{hook.server_port}/hangar"
    budget = make_budget(world, [{"percent": 50, "action": "alert"}], amount="2",
                         webhook_url=url)
    spend(world, "1.5")
    with mock.patch("telemetry.tasks.send_budget_webhook.delay"):
        (event,) = budgets.evaluate(budget)
    for attempt in range(1, budgets.WEBHOOK_MAX_ATTEMPTS):
        with pytest.raises(budgets.WebhookError):
            budgets.deliver_webhook(event.pk)
        event.refresh_from_db()
        assert (event.webhook_state, event.webhook_status) == ("retrying", "retrying: HTTP 500")
        assert event.webhook_attempts == attempt
        assert budgets.webhooks_to_resend() == []  # its retry may still come
        stale(event, webhook_attempt_at=None)
        assert budgets.webhooks_to_resend() == [event.pk]
    assert budgets.deliver_webhook(event.pk) == "failed"
    event.refresh_from_db()
    assert (event.webhook_state, event.webhook_status) == ("failed", "failed: HTTP 500")
    assert event.webhook_attempts == budgets.WEBHOOK_MAX_ATTEMPTS
    assert len(Hook.received) == budgets.WEBHOOK_MAX_ATTEMPTS
    assert budgets.webhooks_to_resend() == []


# Retention ---------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_retention_drops_old_partitions_and_old_rows(settings):
    from django.db import connection
    from django.test import Client

    from .otlp_support import agent_trace, export, give_token, post

    settings.HANGAR_SPAN_RETENTION_DAYS = 3
    deployment = DeploymentFactory()
    token = give_token(deployment)
    now = timezone.now()
    old_ns = int((now - timedelta(days=10)).timestamp()) * 10**9
    fresh = export(agent_trace())
    stale = export(agent_trace(start_ns=old_ns))
    assert post(Client(), token, fresh).status_code == 200
    assert post(Client(), token, stale).status_code == 200  # before retention: default part.
    storage.create_partition((now - timedelta(days=10)).date())  # moves it out of default
    names = [name for name, _ in storage.partitions()]
    assert f"telemetry_span_p{(now - timedelta(days=10)):%Y%m%d}" in names
    Run.objects.filter(trace_id__in=Run.objects.values("trace_id")).update(
        first_seen_at=now - timedelta(days=500))
    report = storage.retention(now)
    assert report["partitions_dropped"] >= 1 and report["runs_deleted"] == 2
    names = [name for name, day in storage.partitions()]
    assert all(day >= (now - timedelta(days=4)).date() for _, day in storage.partitions())
    assert f"telemetry_span_p{(now + timedelta(days=7)):%Y%m%d}" in names
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM telemetry_span")
        assert cursor.fetchone()[0] == 2  # the fresh trace only
    from telemetry import ingest

    ingest.forget_sources()

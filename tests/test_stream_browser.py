"""A poison message in real Chromium, against uvicorn and a Celery worker with
beat: the reference agent, deployed by Hangar on the local runtime, consumes a
Redis stream; a poison message is dead-lettered after its deliveries; the
operator sees it appear in the dead-letters panel without a reload, inspects
it, meets each form error, deploys the fixed version, replays it from the UI,
and it is processed exactly once."""
from __future__ import annotations

import os
import time

import pytest

from deployments import actions
from deployments.audit import SYSTEM
from deployments.models import AuditEvent, Deployment, Instance, Membership

from .browser_support import ARTIFACTS, new_page
from .factories import AgentFactory, TargetFactory, TeamFactory, UserFactory, VersionFactory
from .stream_support import Keys, wait_until
from .test_browser import Services

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def services(tmp_path):
    import redis

    redis.Redis.from_url(os.environ["REDIS_URL"]).delete("celery")
    found = Services(tmp_path)
    found.start_web()
    found.start_worker()
    yield found
    found.stop(found.web)
    found.stop(found.worker)


@pytest.fixture
def keys():
    found = Keys()
    yield found
    found.cleanup()


@pytest.fixture
def page(services):
    with new_page(height=1400, timeout_ms=20_000) as found:
        yield found


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"stream-{name}.png"), full_page=True)


@pytest.fixture
def deployment(services, keys):
    team = TeamFactory(slug="pipes", name="Pipelines")
    Membership.objects.create(team=team, user=UserFactory(username="pipe-op"), role="operator")
    agent = AgentFactory(team=team, slug="enricher", name="Enricher", pattern="stream")
    command = ["python", "agents/reference/agent.py"]
    env = keys.agent_env()
    broken = VersionFactory(agent=agent, number=1, image="", command=command, port=None,
                            env=env, pattern_settings=keys.settings())
    fixed = VersionFactory(agent=agent, number=2, image="", command=command, port=None,
                           env={**env, "AGENT_POISON": ""}, pattern_settings=keys.settings())
    target = TargetFactory(team=team, name="local", kind="local")
    d = actions.create_deployment(agent, version=broken, target=target, actor=SYSTEM,
                                  replicas=1)
    yield d, fixed
    Deployment.objects.filter(pk=d.pk).update(state="stopped")
    from deployments.reconciler import reconcile_deployment

    for _ in range(3):
        reconcile_deployment(d.pk)


def running(d: Deployment, version) -> bool:
    rows = list(Instance.objects.filter(deployment=d).values_list("version_id", "phase"))
    return bool(rows) and all(v == version.pk and p == "running" for v, p in rows)


def test_poison_message_dead_lettered_then_replayed_from_the_ui_once_fixed(
        services, keys, page, deployment):
    from playwright.sync_api import expect

    d, fixed = deployment
    wait_until(lambda: running(d, d.version), timeout=90, what="the consumer running")
    wait_until(lambda: any(g["name"] == keys.group
                           for g in keys.client.xinfo_groups(keys.source))
               if keys.client.exists(keys.source) else False, timeout=30, what="the group")

    page.goto(f"{services.base}/login/")
    page.fill("input[name=username]", "pipe-op")
    page.fill("input[name=password]", "pw-for-tests")
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/login/" not in url)
    page.goto(f"{services.base}/deployments/{d.pk}/")
    expect(page.locator("#live-status")).to_have_text("Live", timeout=15_000)
    page.evaluate("window.__sameDocument = true")
    panel = page.locator("#panel-stream-deadletters")
    expect(panel).to_contain_text("No dead letters.")

    good = keys.client.xadd(keys.source, {"input": "a normal order"})
    poison = keys.client.xadd(keys.source, {"input": "poison", "order": "42"})
    # Dead-lettered after 2 deliveries, and on the page without a reload.
    row = panel.locator("tr[data-deadletter]")
    expect(row).to_have_count(1, timeout=60_000)
    expect(row).to_contain_text(poison)
    expect(row).to_contain_text("poison message")
    expect(row.locator("td").nth(5)).to_have_text("2")
    expect(page.locator("[data-testid=stream-deadletters]")).to_have_text("1", timeout=30_000)
    (dead_id,) = [i for i, _ in keys.client.xrange(keys.deadletter)]
    panel.get_by_text(f"Inspect {dead_id}").click()
    expect(panel.locator(f"[data-testid='inspect-{dead_id}']")).to_contain_text("order: 42")
    assert [f["source_id"] for _, f in keys.client.xrange(keys.output)] == [good]
    shot(page, "01-dead-lettered")

    # Each form error, said in the panel; nothing changes.
    audited = AuditEvent.objects.filter(action__startswith="deployment.deadletters").count
    panel.get_by_role("button", name="Replay ticked").click()
    expect(panel.locator("[data-testid=deadletters-errors]")).to_have_text(
        "Tick at least one dead letter, or act on all of them.")
    panel.get_by_role("button", name="Purge all 1").click()
    expect(panel.locator("[data-testid=purge-all] .error")).to_contain_text(
        f"type {d.name} to confirm")
    panel.get_by_label("Confirm purge all").fill("not the name")
    panel.get_by_role("button", name="Purge all 1").click()
    expect(panel.locator("[data-testid=purge-all] .error")).to_contain_text(
        f"type {d.name} to confirm")
    shot(page, "02-form-errors")
    assert keys.client.xlen(keys.deadletter) == 1 and audited() == 0

    # Deploy the fixed version (AGENT_POISON empty), then replay from the UI.
    actions.update_deployment(d, version=fixed, actor=SYSTEM)
    wait_until(lambda: running(d, fixed), timeout=120, what="the fixed version running")

    panel.get_by_label(f"Select {dead_id}").check()
    panel.get_by_role("button", name="Replay ticked").click()
    expect(panel.locator("[data-testid=deadletters-message]")).to_contain_text(
        f"Replayed 1 dead letter(s) to {keys.source}. — pipe-op")
    expect(panel).to_contain_text("No dead letters.")
    audit = AuditEvent.objects.get(action="deployment.deadletters.replay")
    (new_id,) = audit.after["new_ids"]
    assert audit.after["ids"] == [dead_id] and audit.actor_label == "pipe-op"

    outputs = wait_until(lambda: [f for _, f in keys.client.xrange(keys.output)
                                  if f["source_id"] == new_id], timeout=30,
                         what="the replayed message processed")
    assert outputs[0]["input"] == "poison"
    wait_until(lambda: keys.client.xpending(keys.source, keys.group)["pending"] == 0,
               timeout=30, what="nothing pending")
    time.sleep(2)  # a second delivery would show by now (claim idle is 100 ms)
    results = [f["source_id"] for _, f in keys.client.xrange(keys.output)]
    assert results == [good, new_id]  # processed once, nothing else twice
    assert keys.client.xlen(keys.deadletter) == 0
    expect(page.locator("[data-testid=stream-deadletters]")).to_have_text("0", timeout=30_000)
    assert page.evaluate("window.__sameDocument") is True
    shot(page, "03-replayed")

"""The rollout page in real Chromium against uvicorn: it follows a canary live
(phase, weight, the current step, each metric's chart with canary, stable and
the threshold), an operator promotes and aborts with its buttons, a bad undo
shows the reason, a viewer sees no button. The rollout's moves are made here
(what the worker would do), and reach the page over the live events."""
from __future__ import annotations

import os

import pytest

from deployments import actions as registry
from deployments.audit import SYSTEM
from deployments.models import Membership
from rollouts import actions, engine

from .browser_support import ARTIFACTS, new_page
from .factories import AgentFactory, TargetFactory, TeamFactory, UserFactory, VersionFactory
from .processes import free_port, start_web, stop, wait_for
from .test_browser import service_env
from .test_rollouts import due, ready, runs

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

STEPS = [{"set_weight": 20},
         {"analysis": {"interval_s": 1, "count": 1, "min_runs": 5, "window_s": 60,
                       "metrics": [{"name": "error_rate", "max": 0.1},
                                   {"name": "cost_per_run", "max_ratio": 1.5}]}},
         {"set_weight": 60}, {"pause": {}}, {"set_weight": 100}]


@pytest.fixture
def server(tmp_path):
    import redis

    port = free_port()
    log = tmp_path / "web.log"
    process = start_web(port, service_env(), log)
    wait_for(f"http://127.0.0.1:{port}/healthz", process, log)
    yield f"http://127.0.0.1:{port}"
    stop(process)
    redis.Redis.from_url(os.environ["REDIS_URL"]).delete("celery")  # the unconsumed tasks


def login(page, server, username):
    page.goto(f"{server}/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", "pw-for-tests")
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/login/" not in url)


def test_the_rollout_page_follows_a_canary_live(server):
    from playwright.sync_api import expect

    team = TeamFactory(slug="ro", name="Rollouts team")
    Membership.objects.create(team=team, user=UserFactory(username="ro-op"), role="operator")
    Membership.objects.create(team=team, user=UserFactory(username="ro-viewer"), role="viewer")
    agent = AgentFactory(team=team, slug="ro-agent", name="Ro agent")
    one = VersionFactory(agent=agent, number=1)
    two = VersionFactory(agent=agent, number=2, env={"NEW": "1"})
    d = registry.create_deployment(agent, version=one, target=TargetFactory(team=team),
                                   actor=SYSTEM)
    stable = d.revision
    ready(d, "s-1", stable)
    actions.set_strategy(d, actor=SYSTEM, strategy="canary", steps_=STEPS)

    with new_page(height=1400, timeout_ms=15_000) as page:
        try:
            login(page, server, "ro-op")
            page.goto(f"{server}/deployments/{d.pk}/")
            page.get_by_test_id("rollout-link").click()
            expect(page.get_by_test_id("no-rollout")).to_be_visible()

            registry.update_deployment(d, version=two, actor=SYSTEM)
            d.refresh_from_db()
            engine.split_for(d, 1)
            engine.advance(d.pk)
            expect(page.get_by_test_id("phase")).to_have_text("Progressing")
            expect(page.get_by_test_id("weights")).to_contain_text("20% canary · 80% stable")
            expect(page.locator("[aria-current=step]")).to_contain_text("set weight 20%")

            ready(d, "c-1", d.revision)
            engine.advance(d.pk)
            expect(page.locator("[aria-current=step]")).to_contain_text("analysis")
            due(d)
            runs(d, "s-1", 20)
            runs(d, "c-1", 10, cost="0.0012")
            engine.advance(d.pk)  # passes: on to 60 %
            chart = page.locator("[data-metric=cost_per_run]")
            expect(chart.locator("[data-series=canary]")).to_have_count(1)
            expect(chart.locator("[data-series=stable]")).to_have_count(1)
            expect(chart.locator("[data-series=threshold]")).to_have_count(1)
            expect(chart).to_contain_text("limit 0.0015")
            expect(page.get_by_test_id("measurements")).to_contain_text("passed")
            expect(page.get_by_test_id("weights")).to_contain_text("60% canary")

            engine.advance(d.pk)  # the replica for 60 % is there: the indefinite pause
            expect(page.get_by_test_id("phase")).to_have_text("Paused")
            expect(page.get_by_test_id("message")).to_contain_text("pause until promoted")
            page.get_by_role("button", name="Promote", exact=True).click()
            expect(page.get_by_test_id("phase")).to_have_text("Progressing")
            expect(page.locator("[aria-current=step]")).to_contain_text("set weight 100%")
            expect(page.get_by_test_id("timeline")).to_contain_text("ro-op promoted")

            # A bad undo: the reason on the page, nothing changed.
            page.get_by_label("Undo to revision").fill("99")
            page.get_by_role("button", name="Undo to revision").click()
            expect(page.locator("[data-error-detail]")).to_contain_text(
                "Revision 99 not found; this deployment keeps revision(s) 1–2")
            page.go_back()

            page.goto(f"{server}/deployments/{d.pk}/rollout/")
            page.get_by_role("button", name="Abort").click()
            expect(page.get_by_test_id("phase")).to_have_text("Degraded")
            expect(page.get_by_test_id("message")).to_contain_text("rollout aborted by ro-op")
            expect(page.get_by_role("button", name="Retry")).to_be_visible()

            page.context.clear_cookies()
            login(page, server, "ro-viewer")
            page.goto(f"{server}/deployments/{d.pk}/rollout/")
            expect(page.get_by_test_id("phase")).to_have_text("Degraded")
            expect(page.get_by_test_id("actions")).to_have_count(0)
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "rollouts-browser.png"), full_page=True)
            raise

"""The deployment page's revisions in real Chromium against uvicorn: what
changed between two revisions is on the screen, and *Roll back to n* makes a
new revision. No worker runs: the rollback is recorded by the request itself."""
from __future__ import annotations

import os

import pytest

from deployments import actions
from deployments.audit import SYSTEM
from deployments.models import Membership

from .browser_support import ARTIFACTS, new_page
from .factories import AgentFactory, TargetFactory, TeamFactory, UserFactory, VersionFactory
from .processes import free_port, start_web, stop, wait_for
from .test_browser import service_env

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def server(tmp_path):
    import redis

    port = free_port()
    log = tmp_path / "web.log"
    process = start_web(port, service_env(), log)
    wait_for(f"http://127.0.0.1:{port}/healthz", process, log)
    yield f"http://127.0.0.1:{port}"
    stop(process)
    redis.Redis.from_url(os.environ["REDIS_URL"]).delete("celery")  # the unconsumed passes


@pytest.fixture
def page():
    with new_page(height=1000, timeout_ms=15_000) as found:
        yield found


def test_operator_sees_what_changed_and_rolls_back(server, page):
    from playwright.sync_api import expect

    team = TeamFactory(slug="revs", name="Revisions team")
    Membership.objects.create(team=team, user=UserFactory(username="rev-op"), role="operator")
    agent = AgentFactory(team=team, slug="rev-agent", name="Rev agent")
    one = VersionFactory(agent=agent, number=1, env={"LOG_LEVEL": "info"})
    two = VersionFactory(agent=agent, number=2, image="hangar/reference-agent:2",
                         env={"LOG_LEVEL": "debug"}, memory_mb=512)
    target = TargetFactory(team=team, kind="local")
    d = actions.create_deployment(agent, version=one, target=target, actor=SYSTEM)
    actions.update_deployment(d, version=two, actor=SYSTEM)

    page.goto(f"{server}/login/")
    page.fill("input[name=username]", "rev-op")
    page.fill("input[name=password]", "pw-for-tests")
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/login/" not in url)
    page.goto(f"{server}/deployments/{d.pk}/")

    table = page.locator("[data-testid=revisions]")
    newest = table.locator("tr[data-revision='2']")
    expect(newest).to_contain_text("current")
    changes = newest.locator("[data-testid=changes]")
    expect(changes).to_contain_text("env.LOG_LEVEL: info → debug")
    expect(changes).to_contain_text("memory_mb: 256 → 512")
    expect(changes).to_contain_text("image: hangar/reference-agent:latest → "
                                    "hangar/reference-agent:2")
    expect(newest.get_by_role("button", name="Roll back to 2")).to_have_count(0)
    page.locator("#revisions").scroll_into_view_if_needed()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "revisions-01-diff.png"), full_page=True)

    table.locator("tr[data-revision='1']").get_by_role("button", name="Roll back to 1").click()
    page.wait_for_load_state()
    expect(page.get_by_text("Rolling back to revision 1: it is applied as revision 3.")) \
        .to_be_visible()
    third = page.locator("[data-testid=revisions] tr[data-revision='3']")
    expect(third).to_contain_text("current")
    expect(third).to_contain_text("rollback to revision 1")
    expect(third.locator("[data-testid=changes]")).to_contain_text("env.LOG_LEVEL: debug → info")
    expect(page.locator(".pagehead")).to_contain_text("v1 · revision 3")
    page.screenshot(path=str(ARTIFACTS / "revisions-02-rolled-back.png"), full_page=True)
    d.refresh_from_db()
    assert (d.version_id, d.revision.number) == (one.pk, 3)

"""Every form of the operator UI, submitted once with a bad value in real
Chromium against uvicorn: the error must be on the screen, not only in the
422 body. Also what the browser shows for failures that are not form errors
(403, 409, 500, the server unreachable), the deploy form refreshed by
"Create version", the slug suggested from the name, and 24-hour chart axes.
No worker runs: nothing here needs a deployment to converge."""
from __future__ import annotations

import functools
import os
import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from deployments.models import Deployment, DeploymentSample, Membership
from telemetry.models import Budget, BudgetEvent

from .browser_support import chromium
from .factories import (
    AgentFactory,
    DeploymentFactory,
    TargetFactory,
    TeamFactory,
    UserFactory,
    VersionFactory,
)
from .processes import free_port, start_web, stop, wait_for
from .test_browser import service_env

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
PASSWORD = "pw-for-tests"


@pytest.fixture(scope="module")
def server(django_db_setup, django_db_blocker, tmp_path_factory):
    import redis

    redis.Redis.from_url(os.environ["REDIS_URL"]).delete("celery")
    port = free_port()
    log = tmp_path_factory.mktemp("ui-web") / "web.log"
    with django_db_blocker.unblock():
        env = service_env()
    process = start_web(port, env, log)
    wait_for(f"http://127.0.0.1:{port}/healthz", process, log)
    yield f"http://127.0.0.1:{port}"
    stop(process)
    redis.Redis.from_url(os.environ["REDIS_URL"]).delete("celery")


@pytest.fixture(scope="module")
def browser():
    with chromium() as found:
        yield found


@pytest.fixture
def team(transactional_db):
    team = TeamFactory(slug="forms", name="Forms team")
    for role in ("admin", "operator", "viewer"):
        Membership.objects.create(team=team, user=UserFactory(username=f"ui-{role}"), role=role)
    return team


@pytest.fixture
def open_as(server, browser, team):
    """A logged-in page (en-US, where a 12-hour clock is the default)."""
    contexts = []

    def login(who: str):
        context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="en-US")
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(15_000)
        page.goto(f"{server}/login/")
        page.fill("input[name=username]", f"ui-{who}")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(lambda url: "/login/" not in url)
        return page

    yield login
    for context in contexts:
        context.close()


def test_login_form_error_is_shown(server, browser, team):
    from playwright.sync_api import expect

    page = browser.new_page()
    try:
        page.goto(f"{server}/login/")
        page.fill("input[name=username]", "ui-viewer")
        page.fill("input[name=password]", "wrong")
        page.click("button[type=submit]")
        expect(page.get_by_text("correct username and password")).to_be_visible()
    finally:
        page.close()


def test_register_agent_suggests_the_slug_and_shows_a_duplicate(server, team, open_as):
    from playwright.sync_api import expect

    AgentFactory(team=team, slug="support-bot", name="Support bot")
    page = open_as("operator")
    page.goto(f"{server}/agents/new/")
    page.fill("#agent-form input[name=name]", "Support Bot")
    expect(page.locator("#agent-form input[name=slug]")).to_have_value("support-bot")
    # The user types into the name as soon as the re-rendered form is on the
    # screen, before htmx has settled it (what a loaded machine shows).
    page.evaluate("""() => document.addEventListener("htmx:afterSwap", () => {
        const name = document.querySelector("#agent-form input[name=name]");
        name.value = "Triage Désk 2";
        name.dispatchEvent(new Event("input", {bubbles: true}));
    }, {once: true})""")
    page.click("#agent-form button[type=submit]")
    error = page.locator("#agent-form [role=alert]").first
    expect(error).to_be_visible()
    expect(error).to_contain_text("already exists")
    # The name still drives the suggestion after the server re-rendered the form...
    expect(page.locator("#agent-form input[name=slug]")).to_have_value("triage-desk-2")
    page.fill("#agent-form input[name=name]", "Triage Desk 3")
    expect(page.locator("#agent-form input[name=slug]")).to_have_value("triage-desk-3")
    # ...until the user types a slug of their own.
    page.fill("#agent-form input[name=slug]", "my-own")
    page.fill("#agent-form input[name=name]", "Something else")
    expect(page.locator("#agent-form input[name=slug]")).to_have_value("my-own")
    page.click("#agent-form button[type=submit]")
    page.wait_for_url(re.compile(r".*/agents/\d+/$"))
    expect(page.locator("h1")).to_contain_text("Something else")


def test_agent_page_forms_show_errors_and_create_version_refreshes_deploy(server, team,
                                                                          open_as):
    from playwright.sync_api import expect

    agent = AgentFactory(team=team, slug="fresh", name="Fresh agent")
    TargetFactory(team=team, name="here", kind="local")
    page = open_as("operator")
    page.goto(f"{server}/agents/{agent.pk}/")

    # Deploy with no version yet.
    page.click("#deploy-form button[type=submit]")
    expect(page.locator("#deploy-form .error")).to_contain_text("This field is required.")

    # Bad JSON in pattern settings.
    page.fill("#versions input[name=image]", "hangar/reference-agent:latest")
    page.fill("#versions textarea[name=pattern_settings]", '{"concurrency": ')
    page.click("#versions button[type=submit]")
    expect(page.locator("#versions .error")).to_contain_text("Not valid JSON")
    expect(page.locator("#versions textarea[name=pattern_settings]")).to_be_visible()

    # A good version: the deploy form offers it without a reload.
    page.evaluate("window.__sameDocument = true")
    page.fill("#versions textarea[name=pattern_settings]", "")
    page.click("#versions button[type=submit]")
    expect(page.locator("#versions tbody")).to_contain_text("v1")
    expect(page.locator("#deploy-form select[name=version] option")).to_have_count(1)
    expect(page.locator("#deploy-form .error")).to_have_count(0)
    assert page.evaluate("window.__sameDocument") is True

    # A bad environment name, then a good deploy.
    page.fill("#deploy-form input[name=environment]", "Not A Slug")
    page.click("#deploy-form button[type=submit]")
    expect(page.locator("#deploy-form .error")).to_contain_text("lowercase")
    page.fill("#deploy-form input[name=environment]", "staging")
    page.click("#deploy-form button[type=submit]")
    page.wait_for_url(re.compile(r".*/deployments/\d+/$"))
    expect(page.locator("h1")).to_contain_text("staging")


def fulfill(route, request=None, *, status: int) -> None:
    route.fulfill(status=status, content_type="text/html", body="<h1>boom</h1>")


def test_deployment_page_forms_and_failures_that_are_not_form_errors(server, team, open_as):
    from playwright.sync_api import expect

    agent = AgentFactory(team=team, slug="scaler", name="Scaler")
    deployment = DeploymentFactory(agent=agent, target=TargetFactory(team=team),
                                   version=VersionFactory(agent=agent, number=1))
    page = open_as("operator")
    url = f"{server}/deployments/{deployment.pk}/"
    page.goto(url)

    # Scale to zero without the typed confirmation.
    page.fill("#scale input[name=replicas]", "0")
    page.click("#scale button[type=submit]")
    expect(page.locator("#scale .error")).to_contain_text(
        "Scaling to zero stops every instance: type scaler@production to confirm.")

    # Stop and delete: the button waits for the exact name...
    page.click("button[data-open-dialog=confirm-stop]")
    page.fill("#confirm-stop input[name=confirm]", "scaler@prod")
    expect(page.locator("#confirm-stop [data-confirm-submit]")).to_be_disabled()
    # ...and the server refuses a wrong one all the same, visibly.
    page.evaluate("document.querySelector('#confirm-stop [data-confirm-submit]')"
                  ".disabled = false")
    page.click("#confirm-stop [data-confirm-submit]")
    expect(page.locator(".msg-error")).to_contain_text("Type scaler@production to confirm")
    page.click("button[data-open-dialog=confirm-delete]")
    page.fill("#confirm-delete input[name=confirm]", "nope")
    page.evaluate("document.querySelector('#confirm-delete [data-confirm-submit]')"
                  ".disabled = false")
    page.click("#confirm-delete [data-confirm-submit]")
    expect(page.locator(".msg-error")).to_contain_text("Type scaler@production to confirm")
    assert Deployment.objects.get(pk=deployment.pk).state == "active"

    toast = page.locator("#toast")
    expect(toast).to_be_hidden()
    scale_url = re.compile(r".*/scale/$")

    # 500, 409 and an unreachable server, as the browser would get them.
    for status, text in ((500, "The server failed (500)"), (409, "Conflict")):
        page.route(scale_url, functools.partial(fulfill, status=status))
        page.fill("#scale input[name=replicas]", "2")
        page.click("#scale button[type=submit]")
        expect(toast).to_be_visible()
        expect(toast).to_contain_text(text)
        page.click("[data-toast-close]")
        expect(toast).to_be_hidden()
        page.unroute(scale_url)
    page.route(scale_url, lambda route: route.abort("connectionrefused"))
    page.click("#scale button[type=submit]")
    expect(toast).to_contain_text("Cannot reach the server")
    page.unroute(scale_url)
    page.click("[data-toast-close]")

    # A real 403: the operator lost the role while the page was open.
    Membership.objects.filter(user__username="ui-operator").update(role="viewer")
    page.click("#scale button[type=submit]")
    expect(toast).to_contain_text("This needs the operator role in the team; you have viewer.")
    assert Deployment.objects.get(pk=deployment.pk).replicas == 1


def test_budget_forms_show_their_errors(server, team, open_as):
    from playwright.sync_api import expect

    budget = Budget.objects.create(team=team, name="monthly", amount_usd=Decimal("10"))
    event = BudgetEvent.objects.create(budget=budget, team=team, month=timezone.now().date()
                                       .replace(day=1), percent=80, action="alert",
                                       amount_usd=Decimal("10"), spent_usd=Decimal("8"))
    page = open_as("admin")
    page.goto(f"{server}/teams/{team.pk}/costs/")

    # New budget with a threshold that is not percent:action.
    page.fill("input[name=name]", "cap")
    page.fill("input[name=amount_usd] >> nth=-1", "50")
    page.fill("input[name=thresholds]", "80:explode")
    page.click("text=Create budget")
    expect(page.locator(".field.invalid .error")).to_contain_text(
        "write percent:action, e.g. 80:alert or 100:pause")

    # Budget amount of zero (the browser's own check set aside: the server's answer shows).
    form = page.locator(f"#budget-{budget.pk} form").first
    form.evaluate("f => { f.noValidate = true; }")
    form.locator("input[name=amount_usd]").fill("0")
    form.locator("button").click()
    expect(page.locator(".msg-error")).to_contain_text("Give an amount of at least 0.01.")

    # Dismissing an alert someone else dismissed meanwhile.
    BudgetEvent.objects.filter(pk=event.pk).update(reverted_at=timezone.now())
    page.click(f"[data-testid=revert-{event.pk}]")
    expect(page.locator(".msg-error")).to_contain_text("already reverted")


def test_token_form_error_then_a_token_shown_once_and_revoked(server, team, open_as):
    from playwright.sync_api import expect

    page = open_as("admin")
    page.on("dialog", lambda dialog: dialog.accept())
    page.click(".mainnav >> text=Tokens")
    page.wait_for_url(f"{server}/teams/{team.pk}/tokens/")
    past = timezone.localtime(timezone.now() - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
    page.fill("#token-form input[name=name]", "ci")
    page.select_option("#token-form select[name=scope]", "deploy")
    page.fill("#token-form input[name=expires_at]", past)
    page.click("#token-form button[type=submit]")
    expect(page.locator("#token-form .error")).to_contain_text("Expiry must be in the future.")

    page.fill("#token-form input[name=expires_at]", "")
    page.click("#token-form button[type=submit]")
    value = page.locator("[data-testid=token-value]")
    expect(value).to_have_text(re.compile(r"^hgr_[0-9a-f]{12}_\S+$"))
    row = page.locator("[data-testid=tokens] tr", has_text="ci")
    expect(row).to_contain_text("active")
    page.reload()
    expect(page.locator("[data-testid=token-value]")).to_have_count(0)
    row.locator("button", has_text="Revoke").click()
    expect(page.locator("[data-testid=tokens] tr", has_text="ci")).to_contain_text("revoked")


def test_runs_filter_error_is_shown(server, team, open_as):
    from playwright.sync_api import expect

    page = open_as("viewer")
    page.click(".mainnav >> text=Runs")
    page.fill("#runs-filters input[name=min_cost]", "1")
    page.fill("#runs-filters input[name=max_cost]", "0.5")
    page.click("#runs-filters button[type=submit]")
    expect(page.locator("[data-testid=filter-errors]")).to_contain_text(
        "The maximum cost is below the minimum.")


def test_chart_axes_use_a_24_hour_clock(server, team, open_as):
    from playwright.sync_api import expect

    agent = AgentFactory(team=team, slug="charted", name="Charted")
    deployment = DeploymentFactory(agent=agent, target=TargetFactory(team=team),
                                   version=VersionFactory(agent=agent, number=1))
    now = timezone.now()
    for n in range(5):
        DeploymentSample.objects.create(deployment=deployment, at=now - timedelta(minutes=n),
                                        desired=1, ready=1, cpu_percent=3.0)
    page = open_as("viewer")
    page.goto(f"{server}/deployments/{deployment.pk}/")
    expect(page.locator("#chart-health")).to_be_visible()
    page.wait_for_function("window.Chart && Chart.getChart('chart-health')"
                           " && Chart.getChart('chart-health').data.labels.length === 5")
    labels = page.evaluate("Chart.getChart('chart-health').data.labels")
    assert all(re.fullmatch(r"\d\d:\d\d:\d\d", label) for label in labels), labels

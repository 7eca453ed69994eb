"""A batch agent from the UI, end to end in real Chromium: uvicorn (HTTP and
websockets), a Celery worker with beat (the scheduler and supervisor), the
Redis channel layer, PostgreSQL, and the reference agent's batch mode run as
local processes (the local target) exporting its spans to the same uvicorn.

An operator deploys the batch agent, meets every error of the new-schedule
form (each shown on its field, nothing typed lost), creates a schedule and
sees its next five firings in its own time zone, runs it now and watches the
run appear and finish live (badge, duration, items, tokens, the trace link),
cancels a slow running job, suspends and resumes; a viewer sees the panels
and no button. Screenshots go to test-artifacts/."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from deployments import actions
from deployments.audit import SYSTEM
from deployments.models import Deployment, JobRun, Membership

from .browser_support import ARTIFACTS, new_page
from .factories import AgentFactory, TargetFactory, TeamFactory, UserFactory, VersionFactory
from .processes import ROOT, database_env, free_port, start_web, stop, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

AGENT = ROOT / "agents" / "reference" / "agent.py"


class Services:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = database_env(HANGAR_SWEEP_SECONDS="1", HANGAR_OTLP_ENDPOINT=self.base,
                                HANGAR_DATA_DIR=str(tmp / "data"))
        self.web = self.worker = None

    def start(self) -> None:
        log = self.tmp / "web.log"
        self.web = start_web(self.port, self.env, log)
        wait_for(f"{self.base}/healthz", self.web, log)
        self.worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "controlplane", "worker", "--beat",
             "--concurrency=2", "--loglevel=INFO", "--schedule", str(self.tmp / "beat")],
            cwd=ROOT, env=self.env, stdout=(self.tmp / "worker.log").open("ab"),
            stderr=subprocess.STDOUT, start_new_session=True)

    def logs(self) -> str:
        return "".join((self.tmp / name).read_text()[-4000:] for name in ("web.log", "worker.log")
                       if (self.tmp / name).exists())


@pytest.fixture
def services(tmp_path):
    import redis

    redis.Redis.from_url(os.environ["REDIS_URL"]).delete("celery")
    found = Services(tmp_path)
    found.start()
    yield found
    for deployment in Deployment.objects.filter(agent__slug="digest"):
        for run in JobRun.objects.filter(deployment=deployment, status__in=["pending",
                                                                            "running"]):
            actions.cancel_job_run(run, SYSTEM)
    stop(found.worker)
    stop(found.web)


@pytest.fixture
def world(services):
    team = TeamFactory(slug="nightly", name="Nightly team")
    for name, role in (("ops", "operator"), ("watcher", "viewer")):
        Membership.objects.create(team=team, user=UserFactory(username=name,
                                                              password=f"{name}-password-123"),
                                  role=role)
    agent = AgentFactory(team=team, slug="digest", name="Digest", pattern="batch")
    VersionFactory(agent=agent, number=1, image="", port=None,
                   command=[sys.executable, str(AGENT)], env={"AGENT_MODE": "batch"})
    TargetFactory(team=team, name="this-machine", kind="local")
    return agent


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"batch-{name}.png"), full_page=True)


def login(page, base: str, who: str) -> None:
    from playwright.sync_api import expect

    page.goto(f"{base}/login/")
    page.fill("input[name=username]", who)
    page.fill("input[name=password]", f"{who}-password-123")
    page.click("button[type=submit]")
    expect(page.locator("h1")).to_have_text("Fleet")


def test_a_batch_agent_from_the_ui_create_trigger_watch_it_finish_live(services, world):
    from playwright.sync_api import expect

    with new_page(height=1400) as page:
        login(page, services.base, "ops")
        page.goto(f"{services.base}/agents/{world.pk}/")
        page.fill("#deploy-form input[name=replicas]", "0")
        page.click("#deploy-form button[type=submit]")
        page.wait_for_url("**/deployments/*/")
        deployment = Deployment.objects.get(agent=world)
        expect(page.locator("#live-status")).to_have_text("Live", timeout=15_000)
        page.evaluate("window.__sameDocument = true")
        schedules = page.locator("#panel-batch-schedules")
        expect(schedules).to_contain_text("No schedule yet")

        # Every error of the form, each on its field; what was typed stays.
        form = page.locator("#panel-batch-new-schedule")

        def submit(**fields) -> None:
            values = {"name": "nightly", "cron": "30 2 * * *", "timezone": "Asia/Tokyo",
                      "input": '{"items": ["first report", "second report"]}', **fields}
            for name, value in values.items():
                selector = f"#panel-batch-new-schedule [name={name}]"
                page.fill(selector, value)
            page.click("#panel-batch-new-schedule button[type=submit]")

        def error_on(field: str):
            return form.locator(f"label.field.invalid:has([name={field}]) .error")

        submit(cron="30 2 * *")
        expect(error_on("cron")).to_contain_text("five fields")
        expect(form.locator("[name=cron]")).to_have_value("30 2 * *")
        submit(timezone="Asia/Atlantis")
        expect(error_on("timezone")).to_contain_text("unknown time zone")
        expect(form.locator("[name=timezone]")).to_have_value("Asia/Atlantis")
        submit(input="{not json")
        expect(error_on("input")).to_contain_text("Not valid JSON")
        submit(name="Nightly Run")
        expect(error_on("name")).to_be_visible()
        shot(page, "01-form-errors")
        assert not deployment.schedules.exists()

        submit()
        expect(form.locator("[data-testid=new-schedule-message]")).to_contain_text(
            "Schedule nightly created")
        row = schedules.locator("tr[data-schedule=nightly]")
        firings = row.locator("[data-testid=next-runs] li")
        expect(firings).to_have_count(5, timeout=15_000)
        for n in range(5):
            expect(firings.nth(n)).to_contain_text("02:30:00 JST")  # Tokyo time, not UTC
        submit()  # the same name again
        expect(error_on("name")).to_contain_text("already has a schedule")
        shot(page, "02-schedule-created")

        # Run it now: the run appears and finishes live.
        row.locator("[data-testid=trigger]").click()
        expect(schedules.locator("[data-testid=schedules-message]")).to_contain_text("started")
        history = page.locator("#panel-batch-history")
        run = JobRun.objects.get(schedule__name="nightly")
        run_row = history.locator(f"tr[data-job-run='{run.pk}']")
        expect(run_row).to_be_visible(timeout=15_000)
        expect(run_row.locator("[data-testid=job-status]")).to_have_text(
            "succeeded", timeout=90_000)
        expect(run_row.locator("[data-testid=job-items]")).to_have_text("2")
        expect(run_row.locator("[data-testid=job-duration]")).to_contain_text(" s")
        expect(run_row.locator("[data-testid=job-status]")).to_have_class(
            "pill job-succeeded")
        expect(run_row.locator("[data-testid=job-tokens]")).not_to_have_text("0 / 0")
        # Its spans arrive from the agent (TRACEPARENT): the run gets their LLM
        # cost, live, and links to its trace.
        expect(run_row.locator("[data-testid=job-cost]")).to_contain_text("$", timeout=30_000)
        expect(history.locator("[data-testid=runs-day]")).to_have_text("1")
        assert page.locator("canvas[data-batch-chart]").get_attribute("data-drawn") == "1"
        shot(page, "03-run-finished")
        run_row.locator("[data-testid=job-trace]").click()
        page.wait_for_url("**/runs/*/")
        expect(page.locator("body")).to_contain_text("batch_job")
        page.goto(f"{services.base}/deployments/{deployment.pk}/")
        expect(page.locator("#live-status")).to_have_text("Live", timeout=15_000)
        page.evaluate("window.__sameDocument = true")

        # A slow job, running: cancel it from its row.
        slow = actions.create_schedule(deployment, {
            "name": "slow", "cron": "@yearly", "concurrency_policy": "allow",
            "env": {"AGENT_LATENCY_MS": "120000"}}, SYSTEM)
        expect(schedules.locator("tr[data-schedule=slow]")).to_be_visible(timeout=15_000)
        # A click while a live update re-renders the panel is not lost: the
        # panel is morphed, so the button pressed is the button released.
        button = schedules.locator("tr[data-schedule=slow] [data-testid=trigger]")
        box = button.bounding_box()
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.mouse.down()
        page.evaluate("""() => new Promise((done) => {
            const panel = document.getElementById("panel-batch-schedules");
            document.addEventListener("htmx:afterSettle", function settled(event) {
                if (!event.target.closest("#panel-batch-schedules")) return;
                document.removeEventListener("htmx:afterSettle", settled);
                done();
            });
            window.htmx.trigger(panel, "live");
        })""")
        page.mouse.up()
        slow_run = history.locator("tr[data-status=running]")
        expect(slow_run).to_have_count(1, timeout=60_000)
        slow_pk = JobRun.objects.get(schedule=slow).pk
        # Cancel it, with the answer to the click slower than the supervisor:
        # the page hears "cancelled" while the answer (rendered before, still
        # "running") is on its way. The row ends cancelled all the same — the
        # late answer does not overwrite the newer state.
        page.evaluate("""() => { window.__jobEvents = [];
            document.addEventListener("hangar:event", (event) => {
                if (event.detail.event === "job_run.changed") {
                    window.__jobEvents.push(event.detail.payload);
                }
            }); }""")
        held = []
        page.route("**/job-runs/*/cancel/", lambda route: held.append((route, route.fetch())))
        slow_run.locator("[data-testid=cancel]").click()
        page.wait_for_function(
            """(pk) => window.__jobEvents.some((e) => e.run === pk && e.status === "cancelled")""",
            arg=slow_pk, timeout=60_000)
        # The handler may still be fetching the answer when the event is heard
        # (the server can be slower than the supervisor): let Playwright run it.
        for _ in range(600):
            if held:
                break
            page.wait_for_timeout(100)
        assert len(held) == 1
        route, answer = held[0]
        route.fulfill(response=answer)
        page.unroute("**/job-runs/*/cancel/")
        cancelled = history.locator(f"tr[data-job-run='{slow_pk}'] [data-testid=job-status]")
        expect(cancelled).to_have_text("cancelled", timeout=60_000)
        shot(page, "04-cancelled")

        # Suspend and resume.
        row.locator("[data-testid=suspend]").click()
        expect(row.locator("[data-testid=schedule-state]")).to_have_text("Suspended")
        expect(row.locator("[data-testid=next-runs]")).to_contain_text("none while suspended")
        row.locator("[data-testid=resume]").click()
        expect(row.locator("[data-testid=schedule-state]")).to_have_text("Active")
        expect(firings).to_have_count(5)
        assert page.evaluate("window.__sameDocument") is True  # all of it without a reload
        shot(page, "05-resumed")

    # A viewer sees the same panels, and no button.
    with new_page(height=1400) as page:
        login(page, services.base, "watcher")
        page.goto(f"{services.base}/deployments/{deployment.pk}/")
        expect(page.locator("#panel-batch-schedules tr[data-schedule=nightly]")).to_be_visible()
        expect(page.locator("#panel-batch-history [data-testid=job-status]").first).to_be_visible()
        assert page.locator("#panel-batch-new-schedule").count() == 0
        assert page.locator("[data-testid=trigger], [data-testid=suspend], "
                            "[data-testid=cancel]").count() == 0
        shot(page, "06-viewer")

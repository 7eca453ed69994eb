"""Batch schedules: validated settings, the calendar (DST at both transitions
of a real zone), and the verbs (422 naming the field, sync from a version's
settings, suspension by a budget)."""
from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from deployments import actions, cron
from deployments.audit import Actor
from deployments.errors import Conflict, Invalid
from deployments.models import AuditEvent, DeploymentState, JobStatus, Schedule
from deployments.patterns import get_pattern
from telemetry.budgets import BudgetActor

from .factories import AgentFactory, DeploymentFactory, VersionFactory

BERLIN = ZoneInfo("Europe/Berlin")


def berlin(*args, fold: int = 0) -> datetime:
    return datetime(*args, tzinfo=BERLIN, fold=fold).astimezone(UTC)


# The calendar -------------------------------------------------------------------------

def test_fall_back_the_repeated_hour_fires_once():
    # 2026-10-25: 03:00 CEST becomes 02:00 CET, so 02:30 happens twice.
    fired = cron.upcoming("30 2 * * *", berlin(2026, 10, 24, 12, 0), 3, tz="Europe/Berlin")
    assert fired == [berlin(2026, 10, 25, 2, 30), berlin(2026, 10, 26, 2, 30),
                     berlin(2026, 10, 27, 2, 30)]
    assert fired[0] == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)  # the first 02:30 (CEST)
    # Every 30 minutes across the repeated hour: 02:00 and 02:30 once each.
    half_hours = cron.upcoming("*/30 * * * *", berlin(2026, 10, 25, 1, 45), 5,
                               tz="Europe/Berlin")
    walls = [t.astimezone(BERLIN).strftime("%H:%M%z") for t in half_hours]
    assert walls == ["02:00+0200", "02:30+0200", "03:00+0100", "03:30+0100", "04:00+0100"]


def test_fall_back_from_inside_the_second_pass_does_not_fire_it_again():
    inside = berlin(2026, 10, 25, 2, 10, fold=1)  # 02:10 CET, the second time round
    assert cron.next_after("30 2 * * *", inside, tz="Europe/Berlin") == \
        berlin(2026, 10, 26, 2, 30)


def test_spring_forward_the_skipped_hour_fires_once_at_the_shifted_time():
    # 2026-03-29: 02:00 CET becomes 03:00 CEST, so 02:30 never happens.
    fired = cron.upcoming("30 2 * * *", berlin(2026, 3, 28, 12, 0), 2, tz="Europe/Berlin")
    assert fired[0].astimezone(BERLIN).strftime("%d %H:%M%z") == "29 03:30+0200"
    assert fired[1].astimezone(BERLIN).strftime("%d %H:%M%z") == "30 02:30+0200"
    # Every 20 minutes: 02:00/02:20/02:40 shift onto 03:00/03:20/03:40, each once.
    minutes = cron.upcoming("*/20 * * * *", berlin(2026, 3, 29, 1, 30), 6, tz="Europe/Berlin")
    walls = [t.astimezone(BERLIN).strftime("%H:%M") for t in minutes]
    assert walls == ["01:40", "03:00", "03:20", "03:40", "04:00", "04:20"]
    assert len(set(minutes)) == len(minutes)


def test_spring_forward_just_after_the_gap_still_fires_the_shifted_occurrence():
    after = berlin(2026, 3, 29, 3, 5)  # 03:05 CEST; 02:30 shifted to 03:30 is still ahead
    assert cron.next_after("30 2 * * *", after, tz="Europe/Berlin") == \
        berlin(2026, 3, 29, 3, 30)


def test_a_seconds_field_only_when_enabled():
    start = datetime(2026, 1, 1, tzinfo=UTC)
    assert cron.upcoming("*/10 * * * * *", start, 2, seconds=True) == [
        start + timedelta(seconds=10), start + timedelta(seconds=20)]
    with pytest.raises(cron.BadSchedule, match="five fields") as caught:
        cron.validate("*/10 * * * * *")
    assert caught.value.field == "cron"


@pytest.mark.parametrize("expression,zone,field", [
    ("61 * * * *", "UTC", "cron"),
    ("every five minutes", "UTC", "cron"),
    ("0 0 31 2 *", "UTC", "cron"),  # never fires
    ("*/5 * * * *", "Mars/Olympus", "timezone"),
])
def test_bad_calendars_name_their_field(expression, zone, field):
    with pytest.raises(cron.BadSchedule) as caught:
        cron.validate(expression, timezone=zone)
    assert caught.value.field == field


# Settings -------------------------------------------------------------------------------

def test_batch_settings_list_several_schedules_with_defaults():
    settings = get_pattern("batch").validate_settings({
        "timezone": "Europe/Paris", "retries": 2,
        "schedules": [{"name": "nightly", "cron": "30 2 * * *"},
                      {"name": "fast", "cron": "*/10 * * * * *", "seconds": True,
                       "concurrency_policy": "replace", "retries": 0}]})
    version = VersionFactory.build(pattern_settings=settings)
    specs = {s.name: s for s in get_pattern("batch").schedule_specs(version)}
    assert specs["nightly"].timezone == "Europe/Paris" and specs["nightly"].retries == 2
    assert specs["fast"].seconds and specs["fast"].concurrency_policy == "replace"
    assert specs["fast"].retries == 0 and specs["fast"].timezone == "Europe/Paris"


@pytest.mark.parametrize("settings,named", [
    ({"schedules": [{"name": "x", "cron": "61 * * * *"}]}, "schedules.0.cron"),
    ({"schedules": [{"name": "x", "cron": "* * * * *", "timezone": "Nowhere/City"}]},
     "schedules.0.timezone"),
    ({"schedules": [{"name": "x", "cron": "* * * * *"}, {"name": "x", "cron": "* * * * *"}]},
     "schedules.1.name"),
    ({"schedule": "*/5 * * * *", "backoff_s": -1}, "backoff_s"),
])
def test_bad_batch_settings_name_the_field(settings, named):
    with pytest.raises(Invalid) as caught:
        get_pattern("batch").validate_settings(settings)
    assert named in " ".join(caught.value.detail["pattern_settings"])


# Verbs ----------------------------------------------------------------------------------

@pytest.fixture
def batch(world):
    agent = AgentFactory(team=world.team, slug="nightly-report", pattern="batch")
    version = VersionFactory(agent=agent, number=1, port=None, pattern_settings={
        "schedule": "0 3 * * *", "timezone": "Europe/Berlin"})
    return actions.create_deployment(agent, version=version, target=world.target,
                                     actor=Actor(user=world.users["admin"]))


def test_a_new_batch_deployment_gets_the_schedules_of_its_settings(batch):
    (schedule,) = batch.schedules.all()
    assert (schedule.name, schedule.cron, schedule.timezone, schedule.origin) == (
        "default", "0 3 * * *", "Europe/Berlin", "settings")
    assert schedule.next_due_at.astimezone(BERLIN).strftime("%H:%M") == "03:00"


def test_moving_to_a_version_syncs_settings_schedules_and_keeps_api_ones(batch, world):
    actor = Actor(user=world.users["operator"])
    actions.create_schedule(batch, {"name": "adhoc", "cron": "*/5 * * * *"}, actor)
    v2 = VersionFactory(agent=batch.agent, number=2, port=None, pattern_settings={
        "schedules": [{"name": "hourly", "cron": "0 * * * *"}]})
    actions.update_deployment(batch, version=v2, actor=actor)
    assert sorted(batch.schedules.values_list("name", "origin")) == [
        ("adhoc", "api"), ("hourly", "settings")]


@pytest.mark.parametrize("data,field", [
    ({"name": "x", "cron": "61 * * * *"}, "cron"),
    ({"name": "x", "cron": "*/5 * * * *", "timezone": "Atlantis/Capital"}, "timezone"),
    ({"name": "Bad Name", "cron": "*/5 * * * *"}, "name"),
    ({"name": "x", "cron": "*/5 * * * *", "concurrency_policy": "sometimes"},
     "concurrency_policy"),
    ({"name": "x"}, "cron"),
    ({"name": "x", "cron": "*/5 * * * *", "retries": -1}, "retries"),
])
def test_create_schedule_refuses_bad_input_naming_the_field(batch, world, data, field):
    with pytest.raises(Invalid) as caught:
        actions.create_schedule(batch, data, Actor(user=world.users["operator"]))
    assert field in caught.value.detail
    assert not batch.schedules.filter(name="x").exists()


def test_schedules_are_for_batch_deployments_only(world):
    with pytest.raises(Invalid) as caught:
        actions.create_schedule(world.deployment, {"name": "x", "cron": "* * * * *"},
                                Actor(user=world.users["operator"]))
    assert "deployment_id" in caught.value.detail


def test_a_duplicate_name_is_a_conflict(batch, world):
    with pytest.raises(Conflict):
        actions.create_schedule(batch, {"name": "default", "cron": "* * * * *"},
                                Actor(user=world.users["operator"]))


def test_update_keeps_other_fields_and_recomputes_the_calendar(batch, world):
    schedule = batch.schedules.get()
    now = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    actions.update_schedule(schedule, {"cron": "*/15 * * * *"}, Actor(user=world.users["admin"]),
                            now=now)
    schedule.refresh_from_db()
    assert schedule.timezone == "Europe/Berlin"
    assert schedule.next_due_at == datetime(2026, 6, 1, 12, 15, tzinfo=UTC)
    entry = AuditEvent.objects.filter(action="schedule.update").get()
    assert (entry.before["cron"], entry.after["cron"]) == ("0 3 * * *", "*/15 * * * *")


def test_trigger_makes_a_manual_run_and_refuses_a_paused_deployment(batch, world):
    actor = Actor(user=world.users["operator"])
    schedule = batch.schedules.get()
    run = actions.trigger_schedule(schedule, actor, input={"input": "now please"})
    assert (run.trigger, run.status, run.attempt, run.input) == (
        "manual", JobStatus.PENDING, 1, {"input": "now please"})
    assert len(run.trace_id) == 32
    actions.update_deployment(batch, state=DeploymentState.PAUSED, actor=actor)
    with pytest.raises(Conflict, match="paused"):
        actions.trigger_schedule(schedule, actor)


def test_cancel_a_pending_run_at_once(batch, world):
    actor = Actor(user=world.users["operator"])
    run = actions.trigger_schedule(batch.schedules.get(), actor)
    actions.cancel_job_run(run, actor)
    run.refresh_from_db()
    assert run.status == JobStatus.CANCELLED and run.finished_at is not None
    with pytest.raises(Conflict):
        actions.cancel_job_run(run, actor)


def test_a_budget_pause_suspends_schedules_and_resuming_restores_them(batch, world):
    operator = Actor(user=world.users["operator"])
    manual = actions.create_schedule(batch, {"name": "manual-off", "cron": "* * * * *"},
                                     operator)
    actions.suspend_schedule(manual, operator)
    budget = BudgetActor(user=None, source="budget", budget_name="'monthly' #1")
    actions.update_deployment(batch, state=DeploymentState.PAUSED, actor=budget)
    assert dict(Schedule.objects.filter(deployment=batch).values_list("name",
                                                                      "suspended_reason")) == {
        "default": "budget", "manual-off": "operator"}
    actions.update_deployment(batch, state=DeploymentState.ACTIVE, actor=operator)
    assert dict(Schedule.objects.filter(deployment=batch).values_list("name", "suspended")) == {
        "default": False, "manual-off": True}


def test_deployment_factory_still_works_for_batch(world):
    agent = AgentFactory(team=world.team, slug="plain-batch", pattern="batch")
    deployment = DeploymentFactory(agent=agent, version=VersionFactory(agent=agent, port=None))
    assert not deployment.schedules.exists()


def test_the_readme_batch_settings_example_is_valid():
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = text.split("### Batch: how schedules fire and jobs are supervised", 1)[1]
    example = json.loads(re.search(r"```json\n(.*?)```", section, re.S).group(1))
    stored = get_pattern("batch").validate_settings(example)
    specs = get_pattern("batch").schedule_specs(VersionFactory.build(pattern_settings=stored))
    assert [(s.name, s.timezone, s.retries) for s in specs] == [
        ("nightly", "Europe/Paris", 2), ("fast", "Europe/Paris", 2)]

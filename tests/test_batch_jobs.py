"""Batch: the scheduler (injected clock) and job supervision on the local
driver (real processes of the reference agent in batch mode)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import psutil
import pytest

from deployments import actions
from deployments.audit import Actor
from deployments.batch import scheduler, supervisor
from deployments.batch.outcome import job_spec
from deployments.models import (
    Deployment,
    DeploymentState,
    JobRun,
    JobStatus,
    Policy,
    Schedule,
)
from deployments.reconciler import reconcile_deployment
from deployments.runtimes import get_driver

from .factories import AgentFactory, TargetFactory, VersionFactory
from .processes import ROOT, database_env

pytestmark = pytest.mark.django_db(transaction=True)

BERLIN = ZoneInfo("Europe/Berlin")
AGENT = ["python", "agents/reference/agent.py"]


def make_batch(tmp_path, *, command=AGENT, env=None, settings=None, slug="nightly"
               ) -> Deployment:
    agent = AgentFactory(slug=slug, pattern="batch")
    version = VersionFactory(agent=agent, number=1, image="", command=command, port=None,
                             env={"AGENT_MODE": "batch", **(env or {})},
                             pattern_settings=settings or {})
    target = TargetFactory(team=agent.team, kind="local",
                           connection={"workdir": str(tmp_path / "runtime")})
    return actions.create_deployment(agent, version=version, target=target,
                                     actor=Actor(user=None))


def schedule_of(deployment, now=None, **fields) -> Schedule:
    data = {"name": "job", "cron": "*/5 * * * *", **fields}
    return actions.create_schedule(deployment, data, Actor(user=None),
                                   now=now or datetime.now(UTC))


def until_finished(run: JobRun, timeout: float = 60, **supervise) -> JobRun:
    """Supervision passes (as beat makes them) until the run has finished."""
    deadline = time.monotonic() + timeout
    while True:
        supervisor.supervise(**supervise)
        run.refresh_from_db()
        if run.finished:
            return run
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run.pk} still {run.status}: {run.reason}")
        time.sleep(0.1)


def until_running(run: JobRun, timeout: float = 30) -> JobRun:
    deadline = time.monotonic() + timeout
    while True:
        supervisor.supervise()
        run.refresh_from_db()
        if run.status == JobStatus.RUNNING:
            return run
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run.pk} still {run.status}: {run.reason}")
        time.sleep(0.1)


@pytest.fixture
def cleanup():
    made = []
    yield made
    for deployment in made:
        driver = get_driver(deployment.target)
        for name in driver.list_jobs(deployment.pk):
            driver.remove_job(deployment.pk, name)


# The scheduler ---------------------------------------------------------------------------

def test_fires_on_time_once_and_moves_on(tmp_path):
    d = make_batch(tmp_path)
    start = datetime(2026, 6, 1, 12, 1, tzinfo=UTC)
    s = schedule_of(d, now=start)
    assert s.next_due_at == datetime(2026, 6, 1, 12, 5, tzinfo=UTC)
    assert scheduler.tick(now=s.next_due_at - timedelta(seconds=1)).runs == []
    fired = scheduler.tick(now=s.next_due_at + timedelta(milliseconds=300))
    (run,) = JobRun.objects.filter(pk__in=fired.runs)
    assert (run.occurrence, run.trigger, run.attempt) == (s.next_due_at, "schedule", 1)
    assert scheduler.tick(now=s.next_due_at + timedelta(seconds=2)).runs == []
    s.refresh_from_db()
    assert s.next_due_at == datetime(2026, 6, 1, 12, 10, tzinfo=UTC) and s.missed == 0


def test_one_catch_up_within_the_deadline_and_misses_counted(tmp_path):
    d = make_batch(tmp_path)
    start = datetime(2026, 6, 1, 12, 1, tzinfo=UTC)
    s = schedule_of(d, now=start, starting_deadline_s=600)
    # The scheduler was down for an hour: 12 occurrences came due, 12:05 … 13:00.
    fired = scheduler.tick(now=datetime(2026, 6, 1, 13, 2, tzinfo=UTC))
    (run,) = JobRun.objects.filter(pk__in=fired.runs)
    assert (run.occurrence, run.trigger) == (datetime(2026, 6, 1, 13, 0, tzinfo=UTC), "catchup")
    s.refresh_from_db()
    assert s.missed == 11 and s.next_due_at == datetime(2026, 6, 1, 13, 5, tzinfo=UTC)
    # Beyond the deadline nothing runs; every occurrence is counted missed.
    actions.update_schedule(s, {"starting_deadline_s": 60}, Actor(user=None))
    fired = scheduler.tick(now=datetime(2026, 6, 1, 13, 22, tzinfo=UTC))  # 13:20 is 2 min late
    assert fired.runs == [] and fired.missed == 4  # 13:05, 13:10, 13:15, 13:20
    s.refresh_from_db()
    assert s.missed == 15 and s.next_due_at == datetime(2026, 6, 1, 13, 25, tzinfo=UTC)


@pytest.mark.parametrize("night,expected", [
    # Fall back (03:00 CEST → 02:00 CET): 02:30 happens twice, fires once, the first time.
    (datetime(2026, 10, 24, 22, 0, tzinfo=UTC), [datetime(2026, 10, 25, 0, 30, tzinfo=UTC)]),
    # Spring forward (02:00 CET → 03:00 CEST): 02:30 never happens, fires once at 03:30 CEST.
    (datetime(2026, 3, 28, 22, 0, tzinfo=UTC), [datetime(2026, 3, 29, 1, 30, tzinfo=UTC)]),
])
def test_dst_nights_in_a_real_zone_fire_once(tmp_path, night, expected):
    d = make_batch(tmp_path)
    s = schedule_of(d, cron="30 2 * * *", timezone="Europe/Berlin", now=night)
    fired = []
    clock = night
    while clock < night + timedelta(hours=8):  # a tick every minute through the night
        fired += scheduler.tick(now=clock).runs
        clock += timedelta(minutes=1)
    occurrences = list(JobRun.objects.filter(pk__in=fired).values_list("occurrence", flat=True))
    assert occurrences == expected
    s.refresh_from_db()
    assert s.missed == 0


def test_paused_deployments_and_suspended_schedules_fire_nothing(tmp_path):
    d = make_batch(tmp_path)
    start = datetime(2026, 6, 1, 12, 1, tzinfo=UTC)
    paused_one = schedule_of(d, now=start)
    actions.update_deployment(d, state=DeploymentState.PAUSED, actor=Actor(user=None))
    assert scheduler.tick(now=start + timedelta(minutes=30)).runs == []
    other = make_batch(tmp_path, slug="other")
    s = schedule_of(other, now=start)
    actions.suspend_schedule(s, Actor(user=None))
    assert scheduler.tick(now=start + timedelta(minutes=30)).runs == []
    paused_one.refresh_from_db()
    assert paused_one.next_due_at == datetime(2026, 6, 1, 12, 5, tzinfo=UTC)


def test_two_scheduler_processes_racing_fire_each_of_200_occurrences_once(tmp_path):
    d = make_batch(tmp_path)
    start = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    for n in range(20):  # 20 schedules × 10 occurrences, one a second
        actions.create_schedule(d, {"name": f"s{n}", "cron": "* * * * * *", "seconds": True},
                                Actor(user=None), now=start)
    # Both processes tick at each second of the injected clock (three tries
    # each), and wait for each other before the next second (a file barrier).
    code = (
        "import django, os, sys, time; django.setup()\n"
        "from datetime import datetime, timedelta, UTC\n"
        "from deployments.batch import scheduler\n"
        f"start = datetime.fromisoformat({start.isoformat()!r})\n"
        f"barrier = {str(tmp_path)!r}\n"
        "me, other = sys.argv[1], sys.argv[2]\n"
        "made = []\n"
        "for tick in range(1, 11):\n"
        "    for _ in range(3):\n"
        "        made += scheduler.tick(now=start + timedelta(seconds=tick)).runs\n"
        "    open(os.path.join(barrier, f'{me}-{tick}'), 'w').close()\n"
        "    while not os.path.exists(os.path.join(barrier, f'{other}-{tick}')):\n"
        "        time.sleep(0.005)\n"
        "print(len(made))\n")
    env = database_env()
    procs = [subprocess.Popen([sys.executable, "-c", code, me, other], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for me, other in (("a", "b"), ("b", "a"))]
    made = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        made.append(int(out.strip().splitlines()[-1]))
    runs = list(JobRun.objects.filter(deployment=d).values_list("schedule_id", "occurrence"))
    assert len(runs) == 200 == sum(made)
    assert len(set(runs)) == 200
    assert set(Schedule.objects.filter(deployment=d).values_list("missed", flat=True)) == {0}


# Supervision on the local driver -------------------------------------------------------------

def test_a_job_gets_its_input_and_traceparent_and_its_output_is_recorded(tmp_path, cleanup):
    code = ("import json, os; print('working', flush=True); "
            "print(json.dumps({'traceparent': os.environ['TRACEPARENT'], "
            "'input': os.environ.get('AGENT_INPUT'), 'schedule': os.environ['HANGAR_SCHEDULE'],"
            " 'items': 3, 'usage': {'input_tokens': 5, 'output_tokens': 7}}))")
    d = make_batch(tmp_path, command=["python", "-c", code])
    cleanup.append(d)
    s = schedule_of(d, input={"input": "summarise"}, env={"EXTRA": "1"})
    run = actions.trigger_schedule(s, Actor(user=None))
    run = until_finished(run)
    assert (run.status, run.exit_code, run.attempt) == (JobStatus.SUCCEEDED, 0, 1)
    assert run.output["traceparent"].startswith(f"00-{run.trace_id}-")
    assert json.loads(run.output["input"]) == {"input": "summarise"}
    assert run.output["schedule"] == "job"
    assert (run.items, run.input_tokens, run.output_tokens) == (3, 5, 7)
    assert "working" in run.logs_tail and run.duration_s is not None
    assert get_driver(d.target).list_jobs(d.pk) == {}  # the unit is removed


def test_the_reference_agent_batch_job_reports_its_output(tmp_path, cleanup):
    d = make_batch(tmp_path)
    cleanup.append(d)
    s = schedule_of(d, input={"items": ["one", "two words"]})
    run = until_finished(actions.trigger_schedule(s, Actor(user=None)))
    assert run.status == JobStatus.SUCCEEDED, run.logs_tail
    assert run.output["items"] == 2 and len(run.output["outputs"]) == 2
    assert run.output_tokens > 0 and run.items == 2


def test_a_failure_is_retried_with_backoff_then_given_up(tmp_path, cleanup):
    d = make_batch(tmp_path, env={"AGENT_EXIT_CODE": "3"})
    cleanup.append(d)
    s = schedule_of(d, retries=2, backoff_s=20, backoff_max_s=30)
    first = until_finished(actions.trigger_schedule(s, Actor(user=None)))
    assert (first.status, first.exit_code, first.reason) == (JobStatus.FAILED, 3,
                                                              "exit code 3")
    second = JobRun.objects.get(schedule=s, attempt=2)
    assert (second.trigger, second.status, second.occurrence) == (
        "retry", JobStatus.PENDING, first.occurrence)
    wait = (second.not_before - first.finished_at).total_seconds()
    assert 10 - 1 <= wait <= 20 + 1  # 20 s ceiling, equal jitter: 10–20 s
    supervisor.supervise(now=second.not_before - timedelta(seconds=1))
    second.refresh_from_db()
    assert second.status == JobStatus.PENDING and "backoff" in second.reason
    clock = second.not_before + timedelta(seconds=1)  # the supervisor's clock from here on
    second = until_finished(second, now=clock)
    assert second.status == JobStatus.FAILED
    third = JobRun.objects.get(schedule=s, attempt=3)
    wait = (third.not_before - clock).total_seconds()
    assert 15 - 1 <= wait <= 30 + 1  # doubled to 40, capped at 30: 15–30 s
    third = until_finished(third, now=third.not_before + timedelta(seconds=1))
    assert not JobRun.objects.filter(schedule=s, attempt=4).exists()


def test_a_timeout_kills_the_job_and_records_timeout(tmp_path, cleanup):
    d = make_batch(tmp_path, env={"AGENT_LATENCY_MS": "120000"})
    cleanup.append(d)
    s = schedule_of(d, timeout_s=30)
    run = until_running(actions.trigger_schedule(s, Actor(user=None)))
    pid = _pid(d, run)
    supervisor.supervise(now=run.started_at + timedelta(seconds=10))
    run.refresh_from_db()
    assert run.status == JobStatus.RUNNING
    supervisor.supervise(now=run.started_at + timedelta(seconds=30))
    run.refresh_from_db()
    assert (run.status, run.exit_code) == (JobStatus.TIMEOUT, 124)
    assert "timed out after 30s" in run.reason
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert get_driver(d.target).list_jobs(d.pk) == {}


def _pid(deployment, run) -> int:
    state = json.loads(deployment.target.connection and
                        open(os.path.join(deployment.target.connection["workdir"],
                                          f"deployment-{deployment.pk}", run.unit_name,
                                          "state.json")).read())
    return state["pid"]


def test_forbid_skips_and_replace_stops_the_running_job(tmp_path, cleanup):
    d = make_batch(tmp_path, env={"AGENT_LATENCY_MS": "120000"})
    cleanup.append(d)
    s = schedule_of(d, concurrency_policy="forbid")
    first = until_running(actions.trigger_schedule(s, Actor(user=None)))
    second = actions.trigger_schedule(s, Actor(user=None))
    supervisor.supervise()
    second.refresh_from_db()
    assert second.status == JobStatus.SKIPPED
    assert second.reason == f"forbid: run #{first.pk} is still running"

    actions.update_schedule(s, {"concurrency_policy": "replace"}, Actor(user=None))
    third = actions.trigger_schedule(s, Actor(user=None))
    supervisor.supervise()
    first.refresh_from_db()
    third.refresh_from_db()
    assert (first.status, first.reason) == (JobStatus.CANCELLED, f"replaced by run #{third.pk}")
    assert third.status == JobStatus.RUNNING
    assert list(get_driver(d.target).list_jobs(d.pk)) == [third.unit_name]


def test_history_keeps_the_newest_runs_per_schedule(tmp_path, cleanup):
    d = make_batch(tmp_path)
    cleanup.append(d)
    s = schedule_of(d, succeeded_history=2, failed_history=1)
    ids = [until_finished(actions.trigger_schedule(s, Actor(user=None))).pk for _ in range(4)]
    kept = list(JobRun.objects.filter(schedule=s).order_by("pk").values_list("pk", flat=True))
    assert kept == ids[-2:]


def test_the_team_policy_limits_concurrent_jobs(tmp_path, cleanup):
    d = make_batch(tmp_path, env={"AGENT_LATENCY_MS": "120000"})
    cleanup.append(d)
    Policy.objects.filter(team=d.agent.team).update(max_replicas=1)
    s = schedule_of(d, concurrency_policy="allow")
    first = until_running(actions.trigger_schedule(s, Actor(user=None)))
    second = actions.trigger_schedule(s, Actor(user=None))
    supervisor.supervise()
    second.refresh_from_db()
    assert second.status == JobStatus.PENDING
    assert second.reason == "waiting: team policy allows at most 1 concurrent jobs per deployment"
    actions.cancel_job_run(first, Actor(user=None))
    supervisor.supervise()
    first.refresh_from_db()
    assert first.status == JobStatus.CANCELLED
    until_running(second)


def test_stopping_the_deployment_cancels_its_jobs(tmp_path, cleanup):
    d = make_batch(tmp_path, env={"AGENT_LATENCY_MS": "120000"})
    cleanup.append(d)
    s = schedule_of(d, concurrency_policy="allow")
    running = until_running(actions.trigger_schedule(s, Actor(user=None)))
    actions.update_deployment(d, state=DeploymentState.STOPPED, actor=Actor(user=None))
    supervisor.supervise()
    running.refresh_from_db()
    assert (running.status, running.reason) == (JobStatus.CANCELLED, "the deployment is stopped")
    assert get_driver(d.target).list_jobs(d.pk) == {}


def test_a_worker_killed_mid_job_loses_nothing(tmp_path, cleanup):
    d = make_batch(tmp_path, env={"AGENT_LATENCY_MS": "3000"})
    cleanup.append(d)
    s = schedule_of(d)
    run = actions.trigger_schedule(s, Actor(user=None))
    # A worker that starts the job, then hangs mid-way (it would observe later).
    code = ("import django, time; django.setup()\n"
            "from deployments.batch import supervisor\n"
            "supervisor.supervise()\n"
            "print('started', flush=True)\n"
            "time.sleep(600)\n")
    worker = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=database_env(),
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert worker.stdout.readline().strip() == "started"
        run.refresh_from_db()
        assert run.status == JobStatus.RUNNING
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
    finally:
        if worker.poll() is None:
            os.kill(worker.pid, signal.SIGKILL)
    assert list(get_driver(d.target).list_jobs(d.pk)) == [run.unit_name]  # still running
    run = until_finished(run)
    assert run.status == JobStatus.SUCCEEDED and run.exit_code == 0
    assert run.output["items"] == 1
    assert JobRun.objects.filter(schedule=s).count() == 1
    assert get_driver(d.target).list_jobs(d.pk) == {}


def test_a_crash_before_the_start_was_recorded_adopts_the_unit(tmp_path, cleanup):
    d = make_batch(tmp_path)
    cleanup.append(d)
    s = schedule_of(d)
    run = actions.trigger_schedule(s, Actor(user=None))
    run.unit_name = f"job-{run.pk}"
    get_driver(d.target).start_job(job_spec(run, d))  # started, then the worker died
    run = until_finished(JobRun.objects.get(pk=run.pk))
    assert run.status == JobStatus.SUCCEEDED
    assert JobRun.objects.filter(schedule=s).count() == 1


def test_a_crash_after_the_run_was_recorded_running_starts_it_once_after_the_grace(
        tmp_path, cleanup):
    d = make_batch(tmp_path)
    cleanup.append(d)
    s = schedule_of(d)
    run = actions.trigger_schedule(s, Actor(user=None))
    # Recorded running (write-ahead), then the worker died before starting it.
    JobRun.objects.filter(pk=run.pk).update(status=JobStatus.RUNNING, target=d.target,
                                            unit_name=f"job-{run.pk}", reason="starting")
    run.refresh_from_db()
    supervisor.supervise()  # another supervisor may still be starting it: left alone
    assert get_driver(d.target).list_jobs(d.pk) == {}
    supervisor.supervise(now=run.updated_at + supervisor.START_GRACE)
    assert list(get_driver(d.target).list_jobs(d.pk)) == [run.unit_name]
    run = until_finished(JobRun.objects.get(pk=run.pk))
    assert run.status == JobStatus.SUCCEEDED and run.output["items"] == 1
    assert JobRun.objects.filter(schedule=s).count() == 1


def test_health_is_read_from_the_runs_and_no_replica_runs(tmp_path, cleanup):
    d = make_batch(tmp_path, settings={"schedule": "0 3 * * *"})
    cleanup.append(d)
    reconcile_deployment(d.pk)
    d.refresh_from_db()
    assert not d.instances.exists() and get_driver(d.target).list_instances(d.pk) == []
    assert (d.health, d.health_reason) == (
        "Healthy", "1 of 1 schedule(s) active; 0 job(s) running")
    s = d.schedules.get()
    actions.update_schedule(s, {"env": {"AGENT_EXIT_CODE": "4"}}, Actor(user=None))
    until_finished(actions.trigger_schedule(s, Actor(user=None)))
    reconcile_deployment(d.pk)
    d.refresh_from_db()
    assert d.health == "Degraded"
    assert d.health_reason.endswith("default: last run failed (exit code 4)")
    actions.update_schedule(s, {"env": {}}, Actor(user=None))
    until_finished(actions.trigger_schedule(s, Actor(user=None)))
    reconcile_deployment(d.pk)
    d.refresh_from_db()
    assert d.health == "Healthy"
    actions.suspend_schedule(s, Actor(user=None))
    reconcile_deployment(d.pk)
    d.refresh_from_db()
    assert (d.health, d.health_reason) == (
        "Suspended", "0 of 1 schedule(s) active; 0 job(s) running: every schedule is suspended")

"""Batch benchmark (#11): claiming due schedules, and jobs through Hangar.

(a) 1,000 schedules due at the same instant, two ``manage.py batch_scheduler``
    processes racing to claim them: p99 of (claim time − due time), where the
    claim time is when the job run row was written, and the number of
    duplicate firings (runs beyond one per schedule and occurrence).
(b) 200 short jobs (the reference agent image in batch mode) through Hangar —
    200 runs triggered, two ``batch_scheduler --supervise`` processes starting
    and observing them on one Docker host, at most ``--concurrency`` at once
    (the team policy) — against a raw docker SDK run-to-completion loop
    (create, start, wait, logs, remove) with the same concurrency (threads),
    the same image and the same environment, in the same run.

Last line: ``claim_p99_ms=<…> duplicates=<n> jobs_per_min=<…> ratio=<hangar ÷ baseline>``.

    .venv/bin/python bench/batch.py [--schedules 1000] [--jobs 200] [--concurrency 8]
"""
from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BENCH_DB = "hangar_bench_batch"
os.environ.setdefault("DATABASE_URL", f"postgres://postgres@127.0.0.1:5432/{BENCH_DB}")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/3")
os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
# No trace export from the jobs (Hangar's and the baseline's env alike): with no
# collector listening, the agent's exporter retries for seconds at exit.
os.environ["HANGAR_OTLP_ENDPOINT"] = ""
IMAGE = "hangar/reference-agent:latest"


def sh(*args: str) -> str:
    return subprocess.run(["bash", *args], cwd=ROOT, check=True, capture_output=True,
                          text=True).stdout


def prepare_database() -> None:
    import psycopg

    with psycopg.connect("postgres://postgres@127.0.0.1:5432/postgres", autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")
        c.execute(f"CREATE DATABASE {BENCH_DB}")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


LOGS = Path(os.environ.get("BENCH_LOG_DIR", "/tmp"))
PROFILE = os.environ.get("BENCH_PROFILE_DIR")  # cProfile each scheduler into this folder


def schedulers(count: int, *extra: str) -> list[subprocess.Popen]:
    """``count`` scheduler processes; their output goes to files (a pipe nobody
    reads would block them once full)."""
    env = dict(os.environ)
    processes = []
    for n in range(count):
        tag = f"batch-bench-scheduler-{'supervise-' if extra else ''}{n}"
        profile = ["-m", "cProfile", "-o", f"{PROFILE}/{tag}.prof"] if PROFILE else []
        with (LOGS / f"{tag}.log").open("wb") as log:
            processes.append(subprocess.Popen(
                [sys.executable, *profile, "manage.py", "batch_scheduler", *extra], cwd=ROOT,
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
    return processes


def stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def world(docker_url: str, concurrency: int):
    from deployments import actions
    from deployments.audit import SYSTEM
    from deployments.models import Agent, AgentVersion, Policy, Target, Team

    team = Team.objects.create(slug="bench", name="Bench")
    Policy.objects.create(team=team, max_replicas=concurrency)
    agent = Agent.objects.create(team=team, slug="digest", name="Digest", pattern="batch")
    version = AgentVersion.objects.create(agent=agent, number=1, image=IMAGE, port=None,
                                          env={"AGENT_MODE": "batch"})
    target = Target.objects.create(team=team, name="docker-a", kind="docker",
                                   connection={"url": docker_url})
    return actions.create_deployment(agent, version=version, target=target, actor=SYSTEM)


# (a) claims -------------------------------------------------------------------------------

def bench_claims(deployment, count: int) -> tuple[float, int]:
    from django.db.models import Count
    from django.utils import timezone

    from deployments.models import JobRun, Schedule

    Schedule.objects.bulk_create([
        Schedule(deployment=deployment, name=f"s{n}", cron="* * * * *", timezone="UTC",
                 concurrency_policy="allow", next_due_at=timezone.now() + timedelta(days=1))
        for n in range(count)])
    processes = schedulers(2)
    try:
        time.sleep(3)  # both loops up and idle
        due = (timezone.now() + timedelta(seconds=2)).replace(microsecond=0)
        Schedule.objects.filter(deployment=deployment).update(next_due_at=due)  # all at once
        deadline = time.monotonic() + 60
        while JobRun.objects.filter(deployment=deployment, occurrence=due).count() < count:
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        time.sleep(1)  # a duplicate would have had time to appear
    finally:
        stop(processes)
    runs = list(JobRun.objects.filter(deployment=deployment, occurrence=due)
                .values_list("created_at", flat=True))
    lags = sorted((created - due).total_seconds() * 1000 for created in runs)
    duplicates = sum(row["n"] - 1 for row in JobRun.objects.filter(deployment=deployment)
                     .values("schedule_id", "occurrence").annotate(n=Count("id"))
                     .filter(n__gt=1))
    if len(runs) < count:
        print(f"  only {len(runs)} of {count} claimed within 60 s", flush=True)
    p99 = lags[min(len(lags) - 1, int(len(lags) * 0.99))] if lags else float("nan")
    print(f"  (a) {len(runs)} claims: p50 {statistics.median(lags):.0f} ms, p99 {p99:.0f} ms, "
          f"max {lags[-1]:.0f} ms, duplicates {duplicates}", flush=True)
    JobRun.objects.filter(deployment=deployment).delete()
    Schedule.objects.filter(deployment=deployment).delete()
    return p99, duplicates


# (b) jobs ---------------------------------------------------------------------------------

def bench_hangar_jobs(deployment, jobs: int) -> float:
    from django.db.models import Count

    from deployments import actions
    from deployments.audit import SYSTEM
    from deployments.models import JobRun, JobStatus

    schedule = actions.create_schedule(deployment, {
        "name": "jobs", "cron": "0 0 1 1 *", "concurrency_policy": "allow",
        "input": {"input": "summarise this"}, "succeeded_history": jobs,
        "failed_history": jobs}, SYSTEM)
    processes = schedulers(2, "--supervise", "--busy-interval", "0.05")
    try:
        time.sleep(3)
        started = time.monotonic()
        for _ in range(jobs):
            actions.trigger_schedule(schedule, SYSTEM)
        deadline = started + 900
        while JobRun.objects.filter(schedule=schedule, status__in=["pending", "running"]
                                    ).exists():
            if time.monotonic() > deadline:
                raise SystemExit("Hangar did not finish the jobs in 15 minutes")
            time.sleep(0.1)
        elapsed = time.monotonic() - started
    finally:
        stop(processes)
    outcomes = dict(JobRun.objects.filter(schedule=schedule).values_list("status")
                    .annotate(n=Count("id")))
    ok = outcomes.get(JobStatus.SUCCEEDED, 0)
    print(f"  (b) hangar: {jobs} jobs in {elapsed:.1f} s ({outcomes}), "
          f"{jobs / elapsed * 60:.0f} jobs/min", flush=True)
    if ok != jobs:
        raise SystemExit(f"only {ok} of {jobs} Hangar jobs succeeded")
    return jobs / elapsed * 60


def job_env(deployment) -> dict:
    """The environment Hangar gives a job (same image, same env for the baseline)."""
    from deployments.batch.outcome import job_spec
    from deployments.models import JobRun, Schedule

    schedule = Schedule(deployment=deployment, name="baseline", input={"input": "summarise this"})
    run = JobRun(pk=0, schedule=schedule, deployment=deployment, occurrence=deployment.created_at,
                 input=schedule.input, trace_id="0" * 31 + "1", unit_name="job-0")
    return job_spec(run, deployment).env


def bench_baseline_jobs(docker_url: str, env: dict, jobs: int, concurrency: int) -> float:
    import docker

    client = docker.DockerClient(base_url=docker_url, max_pool_size=concurrency + 2)
    failures = []

    def one(n: int) -> None:
        container = client.api.create_container(
            IMAGE, environment={**env, "HANGAR_JOB_RUN": str(n)},
            labels={"bench": "batch-baseline"}, name=f"bench-batch-{os.getpid()}-{n}",
            host_config=client.api.create_host_config(network_mode="host",
                                                      restart_policy={"Name": "no"}))
        try:
            client.api.start(container["Id"])
            code = client.api.wait(container["Id"])["StatusCode"]
            client.api.logs(container["Id"], stdout=True, stderr=True, tail=200)
            if code != 0:
                failures.append(code)
        finally:
            client.api.remove_container(container["Id"], force=True)

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(one, range(jobs)))
    elapsed = time.monotonic() - started
    client.close()
    if failures:
        raise SystemExit(f"{len(failures)} baseline jobs failed: {failures[:5]}")
    print(f"  (b) baseline: {jobs} jobs in {elapsed:.1f} s, {jobs / elapsed * 60:.0f} jobs/min",
          flush=True)
    return jobs / elapsed * 60


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedules", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()

    sh("scripts/docker-hosts.sh", "start", "1")
    (docker_url,) = sh("scripts/docker-hosts.sh", "hosts", "1").split()
    sh("scripts/images.sh", "ensure", docker_url)
    prepare_database()
    deployment = world(docker_url, args.concurrency)
    print(f"batch bench: {args.schedules} schedules; {args.jobs} jobs at concurrency "
          f"{args.concurrency} on {docker_url}", flush=True)

    p99, duplicates = bench_claims(deployment, args.schedules)
    baseline = bench_baseline_jobs(docker_url, job_env(deployment), args.jobs, args.concurrency)
    hangar = bench_hangar_jobs(deployment, args.jobs)
    print(f"claim_p99_ms={p99:.0f} duplicates={duplicates} jobs_per_min={hangar:.0f} "
          f"ratio={hangar / baseline:.2f}")


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()

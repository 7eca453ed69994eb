"""Canary benchmark (#15): how fast a bad revision is caught, how little of
the traffic it gets meanwhile, and how closely a good one keeps to its pauses.

Steady load (``--clients`` callers in a loop) through the real gateway to the
reference agent on a real Docker host, its runs reaching Hangar over OTLP
(the real web server). Per run:

1. a revision failing 30 % of its requests is deployed with the steps
   5 % → 25 % → 100 % (pauses of ``--pause-s`` between) and a background
   analysis every 10 s (error rate ≤ 5 %, at least 5 runs): the time from the
   start of the rollout to its abort, and the share of *all* requests in that
   window the bad revision served;
2. an undo to the stable revision (immediate), then a good revision with the
   same steps: the time from the start of its rollout to 100 %, against its
   configured pauses (target: within the pauses + 10 %).

What the worker does (reconcile passes, the rollout tick, every
``--tick-s``) runs in this process. The machine is shared: runs are noisy;
medians and spread of ``--runs`` runs are printed.

    .venv/bin/python bench/canary.py [--runs 3] [--clients 8] [--pause-s 15]

Last line: ``abort_s=… bad_share_pct=… good_promote_s=…`` (medians).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BENCH_DB = "hangar_bench_canary"
IMAGE = "hangar/reference-agent:latest"
ENV = {"AGENT_MODE": "realtime", "AGENT_MODEL": "gpt-4o-mini", "OTEL_BSP_SCHEDULE_DELAY": "200",
       "AGENT_LATENCY_MS": "20", "AGENT_DRAIN_S": "10"}


def prepare() -> None:
    os.environ["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{BENCH_DB}"
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/12")
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    import psycopg

    with psycopg.connect("postgres://postgres@127.0.0.1:5432/postgres", autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")
        c.execute(f"CREATE DATABASE {BENCH_DB}")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def spread(values: list[float]) -> str:
    return f"median {statistics.median(values):.2f} (min {min(values):.2f}, max {max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--pause-s", type=int, default=15)
    parser.add_argument("--tick-s", type=float, default=1.0)
    args = parser.parse_args()
    prepare()
    from django.conf import settings

    from deployments import actions as registry
    from deployments.audit import SYSTEM
    from deployments.models import Agent, AgentVersion, Deployment, Policy, Target, Team
    from rollouts import actions, engine
    from tests.docker_support import start_hosts
    from tests.processes import stop
    from tests.rollouts_support import Driver, Servers, Traffic, wait_until

    (url,) = start_hosts(1)
    logs = Path(tempfile.mkdtemp(prefix="bench-canary-"))
    servers = Servers(logs)
    settings.HANGAR_OTLP_ENDPOINT = servers.web_url
    settings.HANGAR_PROGRESS_DEADLINE_S = 60
    team = Team.objects.create(slug="bench", name="Bench")
    Policy.objects.get_or_create(team=team)
    agent = Agent.objects.create(team=team, slug="canary", name="Canary", pattern="realtime")
    target = Target.objects.create(team=team, name="docker", kind="docker",
                                   connection={"url": url})
    numbers = iter(range(1, 1000))

    def version(**env):
        return AgentVersion.objects.create(agent=agent, number=next(numbers), image=IMAGE,
                                           port=8080, cpu="0.3", memory_mb=128,
                                           env={**ENV, **env})

    d = registry.create_deployment(agent, version=version(), target=target, replicas=2,
                                   actor=SYSTEM)
    pause = {"pause": {"duration_s": args.pause_s}}
    steps = [{"set_weight": 5}, pause, {"set_weight": 25}, pause, {"set_weight": 100}]
    analysis = {"interval_s": 10, "count": 1, "min_runs": 5, "window_s": 10,
                "metrics": [{"name": "error_rate", "max": 0.05}]}
    actions.set_strategy(d, actor=SYSTEM, strategy="canary", steps_=steps, analysis=analysis)
    from django.contrib.auth import get_user_model

    from deployments.models import Membership
    user = get_user_model().objects.create(username="bench")
    Membership.objects.create(team=team, user=user, role="operator")
    _, key = registry.create_token(team, name="bench", scope="read", expires_at=None,
                                   actor=SYSTEM, user=user)
    driver = Driver(d.pk, interval=args.tick_s)
    driver.start()
    traffic = None
    results: list[tuple[float, float, float]] = []
    try:
        wait_until(lambda: Deployment.objects.get(pk=d.pk).health == "Healthy", timeout=240,
                   what="the first revision healthy", driver=driver)
        traffic = Traffic(servers.gw("bench/canary/production/invoke"),
                          {"Authorization": f"Bearer {key}"}, clients=args.clients).start()
        time.sleep(5)
        for run in range(1, args.runs + 1):
            number = (engine.latest(d.pk).number if engine.latest(d.pk) else 0) + 1
            started = time.monotonic()
            registry.update_deployment(d, version=version(AGENT_ERROR_RATE="0.3"),
                                       actor=SYSTEM)
            bad = wait_until(lambda n=number: (r := engine.latest(d.pk)) is not None
                             and r.number == n and r.finished and r, timeout=300,
                             what="the abort", driver=driver)
            ended = time.monotonic()
            abort_s = (bad.finished_at - bad.started_at).total_seconds()
            names = set(bad.instances.get(str(bad.canary_revision_id), []))
            window = [a for a in traffic.since(started) if a.started <= ended]
            share = 100 * sum(1 for a in window if a.replica in names) / max(1, len(window))
            print(f"run {run}: bad revision {'aborted' if bad.aborted else bad.phase} after "
                  f"{abort_s:.1f}s ({bad.message}); it served {share:.2f}% of "
                  f"{len(window)} requests", flush=True)
            actions.undo(d, actor=SYSTEM, revision=bad.stable_revision.number)
            wait_until(lambda: Deployment.objects.get(pk=d.pk).health == "Healthy",
                       timeout=240, what="healthy after the undo", driver=driver)
            registry.update_deployment(d, version=version(AGENT_VARIANT=str(run)),
                                       actor=SYSTEM)
            good = wait_until(lambda n=number + 1: (r := engine.latest(d.pk)) is not None
                              and r.number == n and r.finished and r, timeout=600,
                              what="the good revision at 100%", driver=driver)
            promote_s = (good.finished_at - good.started_at).total_seconds()
            print(f"run {run}: good revision {good.phase} after {promote_s:.1f}s "
                  f"(configured pauses {2 * args.pause_s}s)", flush=True)
            results.append((abort_s, share, promote_s))
            wait_until(lambda: Deployment.objects.get(pk=d.pk).health == "Healthy",
                       timeout=240, what="healthy after the promotion", driver=driver)
    finally:
        if traffic is not None:
            traffic.stop()
        driver.stop()
        Deployment.objects.filter(pk=d.pk).update(state="stopped")
        from deployments.reconciler import reconcile_deployment
        for _ in range(3):
            reconcile_deployment(d.pk)
        stop(servers.gateway)
        stop(servers.web)
    aborts, shares, promotes = zip(*results, strict=True)
    failed = sum(1 for a in traffic.answers if a.status not in (200, 500))
    print(f"abort_s: {spread(aborts)}; bad_share_pct: {spread(shares)}; good_promote_s: "
          f"{spread(promotes)} (pauses {2 * args.pause_s}s); requests {len(traffic.answers)}, "
          f"answered other than 200 or the bad revision's 500: {failed}")
    print(f"abort_s={statistics.median(aborts):.1f} bad_share_pct="
          f"{statistics.median(shares):.2f} good_promote_s={statistics.median(promotes):.1f}")


if __name__ == "__main__":
    main()

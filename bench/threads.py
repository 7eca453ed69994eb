"""Threads benchmark (#14): double-texting under load through the gateway's
threads API, against reference agents (local processes, 3 replicas of one
real-time deployment), on a PostgreSQL database of its own.

(a) admission: time from posting a run on an idle thread (POST
    /threads/{id}/runs/stream) to the agent's first event (it was invoked),
    against the same thread call straight to a replica's /invoke — the p99 of
    each and the difference (what admission adds);
(b) 200 threads × 20 turns, every thread a client in a closed loop; each turn
    posts a run under a random strategy and, one time in three, double-texts a
    second run at once under another random strategy (reject, enqueue,
    interrupt, rollback), then waits for its runs. Afterwards every invariant
    is counted from PostgreSQL: two runs of a thread overlapping, runs started
    out of arrival order, a thread whose state is not the fold of its
    successful runs (plus kept partial states), runs left active, threads left
    busy.

The machine is shared and noisy: run it three times and compare medians.

    .venv/bin/python bench/threads.py [--threads 200] [--turns 20]

Last line: ``violations=<n> admit_p99_ms=<…> turns_per_s=<…>``
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BENCH_DB = "hangar_bench_threads"
STRATEGIES = ["reject", "enqueue", "interrupt", "rollback"]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def prepare() -> None:
    os.environ["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{BENCH_DB}"
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/10")
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    import psycopg

    with psycopg.connect("postgres://postgres@127.0.0.1:5432/postgres", autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")
        c.execute(f"CREATE DATABASE {BENCH_DB}")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


async def first_values(client, url: str, body: dict, headers: dict) -> float:
    """Seconds from sending to the first ``values`` event of an SSE answer."""
    started = time.perf_counter()
    async with client.stream("POST", url, json=body, headers={
            **headers, "accept": "text/event-stream"}) as response:
        response.raise_for_status()
        elapsed = None
        async for line in response.aiter_lines():  # read it all: the run ends
            if line == "event: values" and elapsed is None:
                elapsed = time.perf_counter() - started
    if elapsed is None:
        raise RuntimeError(f"no values event from {url}")
    return elapsed


async def admission(base: str, agent_urls: list[str], headers: dict, n: int) -> tuple:
    import httpx

    through, direct = [], []
    async with httpx.AsyncClient(timeout=60) as client:
        for i in range(n):
            thread = (await client.post(f"{base}/threads", json={}, headers=headers)).json()
            body = {"assistant_id": "ref:production", "input": f"hello {i}",
                    "stream_mode": ["values"]}
            through.append(await first_values(
                client, f"{base}/threads/{thread['thread_id']}/runs/stream", body, headers))
            direct.append(await first_values(
                client, agent_urls[i % len(agent_urls)],
                {"input": f"hello {i}", "thread": {"id": thread["thread_id"], "state": {}}},
                {}))
    return percentile(through, 99) * 1000, percentile(direct, 99) * 1000


async def conversations(base: str, headers: dict, threads: int, turns: int,
                        seed: int) -> tuple[list[str], int, float]:
    import httpx

    rng = random.Random(seed)
    # Idle connections are dropped before uvicorn's keep-alive (5 s) closes them under us.
    limits = httpx.Limits(max_connections=threads * 2, max_keepalive_connections=threads * 2,
                          keepalive_expiry=2)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        ids = []
        for _ in range(threads):
            ids.append((await client.post(f"{base}/threads", json={},
                                          headers=headers)).json()["thread_id"])
        rejected = 0

        async def post(tid: str, text: str, strategy: str) -> str | None:
            nonlocal rejected
            answer = await client.post(f"{base}/threads/{tid}/runs", headers=headers, json={
                "assistant_id": "ref:production", "input": text,
                "multitask_strategy": strategy})
            if answer.status_code == 409:
                rejected += 1
                return None
            answer.raise_for_status()
            return answer.json()["run_id"]

        async def converse(tid: str, plan: list) -> None:
            for turn, (strategy, double) in enumerate(plan):
                made = [await post(tid, f"turn {turn}", strategy)]
                if double:
                    made.append(await post(tid, f"turn {turn} again", double))
                for run_id in [m for m in made if m]:
                    await client.get(f"{base}/threads/{tid}/runs/{run_id}/join",
                                     headers=headers)

        plans = {tid: [(rng.choice(STRATEGIES),
                        rng.choice(STRATEGIES) if rng.random() < 1 / 3 else None)
                       for _ in range(turns)] for tid in ids}
        started = time.perf_counter()
        await asyncio.gather(*(converse(tid, plan) for tid, plan in plans.items()))
        elapsed = time.perf_counter() - started
    return ids, rejected, elapsed


def roles(values) -> list[tuple[str, str | None]]:
    return [(m["role"], m["content"] if m["role"] == "user" else None)
            for m in (values or {}).get("messages", [])]


def violations(thread_ids: list[str]) -> int:
    from threads.models import Checkpoint, Thread, ThreadRun

    found = 0
    rows = list(ThreadRun.objects.filter(thread_id__in=thread_ids).order_by("position"))
    partial = dict(Checkpoint.objects.filter(thread_id__in=thread_ids, source="partial")
                   .values_list("run_id", "values"))
    by_thread: dict = {}
    for r in rows:
        by_thread.setdefault(str(r.thread_id), []).append(r)
    for thread in Thread.objects.filter(pk__in=thread_ids):
        runs = by_thread.get(str(thread.pk), [])
        found += sum(1 for r in runs if r.status in ("pending", "running"))
        found += thread.status == "busy"
        started = sorted((r for r in runs if r.started_at), key=lambda r: r.started_at)
        found += sum(1 for a, b in zip(started, started[1:], strict=False)
                     if a.ended_at is None or a.ended_at > b.started_at)
        found += sum(1 for a, b in zip(started, started[1:], strict=False)
                     if a.position > b.position)
        expected = []
        for r in runs:
            if r.status == "success":
                expected += [("user", r.input), ("assistant", None)]
            elif r.pk in partial:  # what it streamed before it was cut: kept
                kept = roles(partial[r.pk])
                found += kept[:len(expected)] != expected or len(kept) == len(expected)
                expected = kept
        found += roles(thread.values) != expected
    return found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=200)
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--admissions", type=int, default=200)
    parser.add_argument("--seed", type=int, default=14)
    opts = parser.parse_args()
    prepare()

    from deployments import actions
    from deployments.audit import Actor
    from deployments.models import Instance
    from tests.factories import (
        AgentFactory,
        DeploymentFactory,
        MembershipFactory,
        TargetFactory,
        TeamFactory,
        UserFactory,
        VersionFactory,
    )
    from tests.gateway_support import start_agent, start_gateway
    from tests.processes import database_env, free_port, stop

    team = TeamFactory(slug="bench")
    user = UserFactory(username="bench")
    MembershipFactory(team=team, user=user, role="admin")
    agent = AgentFactory(team=team, slug="ref", pattern="realtime")
    version = VersionFactory(agent=agent)
    target = TargetFactory(team=team, name="local-0")
    deployment = DeploymentFactory(agent=agent, version=version, target=target, replicas=3)
    _, token = actions.create_token(team, name="bench", scope="read", expires_at=None,
                                    actor=Actor(user=user))
    headers = {"x-api-key": token}
    logs = Path("/tmp/bench-threads")
    logs.mkdir(exist_ok=True)
    started, ports = [], []
    try:
        for i in range(3):
            process, port = start_agent(f"ref-{i}", logs / f"ref-{i}.log",
                                        AGENT_TOKEN_DELAY_MS="3")
            started.append(process)
            ports.append(port)
            Instance.objects.create(deployment=deployment, target=target, name=f"ref-{i}",
                                    address=f"127.0.0.1:{port}", port=port, phase="running",
                                    health="Healthy", version=version)
        gw_port = free_port()
        started.append(start_gateway(gw_port, database_env(), logs / "gateway.log",
                                     HANGAR_LOG_LEVEL="WARNING",
                                     HANGAR_GATEWAY_TRACE_WAIT_S="1",
                                     # One token drives 200 threads: limits high enough
                                     # never to refuse it, still taken on every request.
                                     HANGAR_GATEWAY_RATE_PER_S="100000",
                                     HANGAR_GATEWAY_CONCURRENT="10000"))
        base = f"http://127.0.0.1:{gw_port}/lg/bench"
        agent_urls = [f"http://127.0.0.1:{p}/invoke" for p in ports]
        through, direct = asyncio.run(admission(base, agent_urls, headers, opts.admissions))
        print(f"(a) admission p99: through the threads API {through:.2f} ms, "
              f"straight to a replica {direct:.2f} ms")
        ids, rejected, elapsed = asyncio.run(conversations(base, headers, opts.threads,
                                                          opts.turns, opts.seed))
        turns = opts.threads * opts.turns
        from threads.models import ThreadRun

        total = ThreadRun.objects.filter(thread_id__in=ids).count()
        print(f"(b) {opts.threads} threads × {opts.turns} turns in {elapsed:.1f} s: "
              f"{total} runs kept, {rejected} double-texts rejected (409)")
        found = violations(ids)
        print(f"violations={found} admit_p99_ms={max(0.0, through - direct):.2f} "
              f"turns_per_s={turns / elapsed:.1f}")
    finally:
        for process in started:
            stop(process, timeout=10)


if __name__ == "__main__":
    main()

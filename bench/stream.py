"""Stream benchmark: a burst of 20,000 messages at the reference agent (~1 ms of
work each, ``AGENT_LATENCY_MS=1``) on a Redis stream.

Three sides per run, each on a fresh stream and consumer group, on one real
Docker host, with the same image, resources and environment:

* baseline — a raw consumer group of 8 consumers of the image, started (and
  connected) before the burst;
* hangar-from-0 — a Hangar stream deployment at 0 replicas, max 8, scaled on
  the lag Hangar reads from the broker (a real Celery worker with beat);
* hangar-at-8 — the same, already running 8 replicas when the burst comes.

Per side: drain time (first message added → every message acknowledged, the
group's lag and pending both 0), time to first scale-out (Hangar: the first
replica decided, and the first result written), peak lag, throughput, lost
(added but no result) and duplicates (more than one result). With ``--runs``
the summary gives medians and spread. The last line is
``drain_s=<hangar-from-0> baseline_drain_s=<…> ratio=<drain ÷ baseline drain>
lost=<n>`` (medians; lost summed over every side and run); the line before it
gives the figure for Hangar starting at 8.

    .venv/bin/python bench/stream.py --runs 3
"""
from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BENCH_DB = "hangar_bench_stream"
os.environ.setdefault("DATABASE_URL", f"postgres://postgres@127.0.0.1:5432/{BENCH_DB}")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/12")  # Celery + channel layer
os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
STREAM_REDIS = os.environ.get("HANGAR_BENCH_STREAM_REDIS", "redis://127.0.0.1:6379/11")
IMAGE = "hangar/reference-agent:latest"
MAX = 8


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


@dataclass
class Side:
    name: str
    drain_s: float = 0.0
    first_scale_s: float | None = None  # first replica decided (Hangar)
    first_result_s: float | None = None
    peak_lag: int = 0
    lost: int = 0
    duplicates: int = 0
    messages: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def throughput(self) -> float:
        return self.messages / self.drain_s if self.drain_s else 0.0

    def line(self) -> str:
        first = "" if self.first_scale_s is None else f" first scale-out {self.first_scale_s:.2f}s,"
        return (f"{self.name}: drain {self.drain_s:.2f}s,{first} first result "
                f"{self.first_result_s or 0:.2f}s, peak lag {self.peak_lag}, "
                f"{self.throughput:.0f} msg/s, lost {self.lost}, duplicates {self.duplicates}")


class Keys:
    def __init__(self, tag: str):
        import redis

        self.prefix = f"bench-stream-{tag}-{uuid.uuid4().hex[:6]}"
        self.source, self.group = f"{self.prefix}:in", "workers"
        self.output, self.deadletter = f"{self.prefix}:out", f"{self.prefix}:dead"
        self.client = redis.Redis.from_url(STREAM_REDIS, decode_responses=True)
        self.client.xgroup_create(self.source, self.group, id="0", mkstream=True)

    def settings(self, **extra) -> dict:
        return {"source": {"kind": "redis", "url": STREAM_REDIS, "stream": self.source,
                           "group": self.group},
                "output_stream": self.output, "deadletter_stream": self.deadletter, **extra}

    def agent_env(self) -> dict[str, str]:
        """The consumer's connection, in the version's env too (whatever the
        control plane injects besides, both sides get the same)."""
        return {"STREAM_REDIS_URL": STREAM_REDIS, "STREAM_URL": STREAM_REDIS,
                "STREAM_KIND": "redis", "STREAM_NAME": self.source,
                "STREAM_GROUP": self.group, "STREAM_OUTPUT": self.output,
                "STREAM_DEADLETTER": self.deadletter, "STREAM_CLAIM_IDLE_MS": "30000"}

    def group_state(self) -> tuple[int, int, int]:
        """(lag, pending, entries read) of the group, as the broker says."""
        for g in self.client.xinfo_groups(self.source):
            if g["name"] == self.group:
                return int(g.get("lag") or 0), int(g["pending"]), int(g.get("entries-read") or 0)
        return 0, 0, 0

    def cleanup(self) -> None:
        for key in (self.source, self.output, self.deadletter):
            self.client.delete(key)
        self.client.close()


def burst(keys: Keys, n: int) -> tuple[float, list[str]]:
    """Add ``n`` messages as fast as Redis takes them; (start time, their ids)."""
    started = time.perf_counter()
    ids: list[str] = []
    for chunk in range(0, n, 1000):
        pipe = keys.client.pipeline(transaction=False)
        for i in range(chunk, min(chunk + 1000, n)):
            pipe.xadd(keys.source, {"input": f"message {i}"})
        ids.extend(pipe.execute())
    return started, ids


def drain(keys: Keys, side: Side, n: int, started: float, *, timeout: float,
          watch=None) -> None:
    """Until every message is acknowledged: peak lag, first result, drain time."""
    while True:
        now = time.perf_counter()
        lag, pending, read = keys.group_state()
        side.peak_lag = max(side.peak_lag, lag + pending)
        if side.first_result_s is None and keys.client.xlen(keys.output):
            side.first_result_s = now - started
        if watch is not None:
            watch(now)
        if read >= n and lag == 0 and pending == 0:
            side.drain_s = now - started
            break
        if now - started > timeout:
            side.notes.append(f"not drained after {timeout:.0f}s (lag {lag}, pending {pending})")
            side.drain_s = now - started
            break
        time.sleep(0.05)


def account(keys: Keys, side: Side, ids: list[str]) -> None:
    seen: dict[str, int] = {}
    last = "-"
    while True:
        entries = keys.client.xrange(keys.output, last, "+", count=5000)
        if last != "-":
            entries = entries[1:]
        if not entries:
            break
        for _, fields in entries:
            seen[fields.get("source_id", "")] = seen.get(fields.get("source_id", ""), 0) + 1
        last = entries[-1][0]
    side.messages = len(ids)
    side.lost = sum(1 for i in ids if i not in seen)
    dead = keys.client.xlen(keys.deadletter)
    if dead:
        side.notes.append(f"{dead} dead-lettered")
    side.duplicates = sum(c - 1 for c in seen.values() if c > 1)


class Hangar:
    """The bench team, its Docker target and a real worker with beat."""

    def __init__(self, url: str, cpu: str):
        from deployments.models import Policy
        from tests.factories import AgentFactory, TargetFactory

        self.agent = AgentFactory(slug="bench-stream", pattern="stream")
        Policy.objects.update_or_create(team=self.agent.team, defaults={"max_replicas": 1000})
        self.target = TargetFactory(team=self.agent.team, name="docker-0", kind="docker",
                                    connection={"url": url})
        self.cpu = cpu
        self.versions = 0
        self.log = Path(tempfile.mkdtemp()) / "worker.log"
        env = dict(os.environ, HANGAR_SWEEP_SECONDS="1")
        self.worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "controlplane", "worker", "--beat",
             "--concurrency=2", "--loglevel=WARNING", "--schedule", str(self.log) + ".beat"],
            cwd=ROOT, env=env, stdout=self.log.open("w"), stderr=subprocess.STDOUT,
            start_new_session=True)
        time.sleep(6)  # let the worker connect before any clock starts

    def version(self, keys: Keys, polling_s: float):
        from tests.factories import VersionFactory

        self.versions += 1
        return VersionFactory(
            agent=self.agent, number=self.versions, image=IMAGE, port=8080, cpu=self.cpu,
            memory_mb=192, env={"AGENT_MODE": "stream", "AGENT_LATENCY_MS": "1",
                                **keys.agent_env()},
            pattern_settings=keys.settings(lag_target=1000, activation_lag=0, min_replicas=0,
                                           max_replicas=MAX, polling_s=polling_s,
                                           cooldown_s=300, claim_idle_s=30))

    def deploy(self, keys: Keys, replicas: int, polling_s: float):
        """At ``replicas``, held there (min = max) until ``release`` opens 0..8:
        with nothing to read the lag autoscaler would scale down meanwhile."""
        from deployments import actions
        from deployments.audit import SYSTEM

        version = self.version(keys, polling_s)
        return actions.create_deployment(
            self.agent, version=version, target=self.target, actor=SYSTEM,
            environment=f"bench-{self.versions}", replicas=replicas, autoscale_signal="lag",
            autoscale_min=replicas, autoscale_max=max(replicas, MAX) if replicas else MAX,
            autoscale_target=1000)

    def release(self, deployment) -> None:
        from deployments import actions
        from deployments.audit import SYSTEM
        from deployments.models import Deployment

        d = Deployment.objects.get(pk=deployment.pk)
        if d.autoscale_min:
            actions.update_deployment(d, autoscale_min=0, actor=SYSTEM)

    def env_for(self, deployment) -> dict[str, str]:
        """What a Hangar instance of ``deployment`` gets (the baseline gets the same)."""
        from deployments.patterns import get_pattern
        from deployments.reconciler.specs import instance_env

        env = instance_env(deployment, deployment.version, "baseline")
        pattern = get_pattern(deployment.agent.pattern)
        if hasattr(pattern, "instance_env"):
            extra, _ = pattern.instance_env(deployment, deployment.version, secrets={})
            env.update(extra)
        return env

    def running(self, deployment) -> int:
        from deployments.models import Instance

        return Instance.objects.filter(deployment=deployment, health="Healthy").count()

    def remove(self, deployment) -> None:
        from deployments import actions
        from deployments.audit import SYSTEM
        from deployments.models import Deployment, Instance

        d = Deployment.objects.get(pk=deployment.pk)
        actions.update_deployment(d, state="stopped", actor=SYSTEM)
        deadline = time.monotonic() + 120
        while Instance.objects.filter(deployment=d).exists() and time.monotonic() < deadline:
            time.sleep(0.5)

    def close(self) -> None:
        os.killpg(self.worker.pid, signal.SIGTERM)
        self.worker.wait(timeout=60)


def run_hangar(hangar: Hangar, n: int, start: int, polling_s: float, timeout: float) -> Side:
    from deployments.models import Deployment

    keys = Keys(f"h{start}")
    side = Side(f"hangar-from-{start}")
    deployment = hangar.deploy(keys, start, polling_s)
    try:
        deadline = time.monotonic() + 180
        while hangar.running(deployment) < start:
            if time.monotonic() > deadline:
                raise SystemExit(f"{start} replicas never healthy:\n"
                                 f"{hangar.log.read_text()[-3000:]}")
            time.sleep(0.2)
        started, ids = burst(keys, n)
        hangar.release(deployment)  # now 0..8 on the lag, the burst already in the stream
        peak = [start]

        def watch(now: float) -> None:
            replicas = Deployment.objects.filter(pk=deployment.pk).values_list(
                "replicas", flat=True).first() or 0
            if side.first_scale_s is None and replicas > start:
                side.first_scale_s = now - started
            peak[0] = max(peak[0], replicas)

        drain(keys, side, n, started, timeout=timeout, watch=watch)
        side.notes.append(f"peak replicas {peak[0]}")
        account(keys, side, ids)
    finally:
        hangar.remove(deployment)
        keys.cleanup()
    return side


def run_baseline(hangar: Hangar, url: str, n: int, timeout: float) -> Side:
    import docker

    keys = Keys("base")
    side = Side("baseline")
    deployment = hangar.deploy(keys, 0, 10)
    from deployments.models import Deployment

    Deployment.objects.filter(pk=deployment.pk).update(state="stopped")  # a template only
    env = hangar.env_for(deployment)
    client = docker.DockerClient(base_url=url)
    containers = []
    try:
        from deployments.runtimes.base import loopback_port_free

        ports = [p for p in range(32100, 32400) if loopback_port_free("127.0.0.1", p)][:MAX]
        for i, port in enumerate(ports):
            containers.append(client.containers.run(
                IMAGE, name=f"bench-stream-baseline-{keys.prefix[-6:]}-{i}", detach=True,
                network_mode="host", labels={"bench": "stream-baseline"},
                environment={**env, "PORT": str(port), "AGENT_BIND": "127.0.0.1",
                             "HANGAR_INSTANCE": f"baseline-{i}"},
                nano_cpus=int(float(hangar.cpu) * 1e9), mem_limit="192m"))
        import urllib.request

        def ready(port: int) -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                    return r.status == 200
            except OSError:
                return False

        deadline = time.monotonic() + 120
        while not all(ready(p) for p in ports):
            if time.monotonic() > deadline:
                raise SystemExit("baseline consumers never ready")
            time.sleep(0.2)
        started, ids = burst(keys, n)
        drain(keys, side, n, started, timeout=timeout)
        account(keys, side, ids)
    finally:
        for c in containers:
            c.remove(force=True)
        client.close()
        keys.cleanup()
    return side


def spread(values: list[float]) -> str:
    return (f"median {statistics.median(values):.2f} (min {min(values):.2f}, "
            f"max {max(values):.2f}, n={len(values)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--polling-s", type=float, default=1.0,
                        help="the deployment's lag polling interval (default 1 s)")
    parser.add_argument("--cpu", default="0.5", help="cores per consumer, both sides")
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()
    sh("scripts/docker-hosts.sh", "start", "1")
    (url,) = sh("scripts/docker-hosts.sh", "hosts", "1").split()
    sh("scripts/images.sh", "ensure", url)
    prepare_database()
    hangar = Hangar(url, args.cpu)
    sides: dict[str, list[Side]] = {"baseline": [], "hangar-from-0": [], "hangar-from-8": []}
    try:
        for run in range(1, args.runs + 1):
            for name, measure in (
                    ("baseline", lambda: run_baseline(hangar, url, args.messages, args.timeout)),
                    ("hangar-from-0", lambda: run_hangar(hangar, args.messages, 0,
                                                         args.polling_s, args.timeout)),
                    ("hangar-from-8", lambda: run_hangar(hangar, args.messages, MAX,
                                                         args.polling_s, args.timeout))):
                s = measure()
                sides[name].append(s)
                notes = f" ({'; '.join(s.notes)})" if s.notes else ""
                print(f"run {run} {s.line()}{notes}", flush=True)
    finally:
        hangar.close()
    base = [s.drain_s for s in sides["baseline"]]
    for name, runs in sides.items():
        print(f"{name}: drain {spread([s.drain_s for s in runs])}; throughput "
              f"{spread([s.throughput for s in runs])} msg/s; peak lag "
              f"{spread([float(s.peak_lag) for s in runs])}")
    for name in ("hangar-from-0", "hangar-from-8"):
        firsts = [s.first_result_s or 0.0 for s in sides[name]]
        ratios = [s.drain_s / b for s, b in zip(sides[name], base, strict=True)]
        print(f"{name}: first result {spread(firsts)} s; ratio {spread(ratios)}")
    scale = [s.first_scale_s for s in sides["hangar-from-0"] if s.first_scale_s is not None]
    if scale:
        print(f"hangar-from-0: time to first scale-out {spread(scale)} s")
    lost = sum(s.lost for runs in sides.values() for s in runs)
    dups = sum(s.duplicates for runs in sides.values() for s in runs)
    print(f"duplicates={dups} (at-least-once delivery; every side and run)")
    at8 = [s.drain_s for s in sides["hangar-from-8"]]
    ratio8 = statistics.median([d / b for d, b in zip(at8, base, strict=True)])
    print(f"from_8: drain_s={statistics.median(at8):.2f} "
          f"baseline_drain_s={statistics.median(base):.2f} ratio={ratio8:.3f}")
    h0 = [s.drain_s for s in sides["hangar-from-0"]]
    ratio = statistics.median([d / b for d, b in zip(h0, base, strict=True)])
    print(f"drain_s={statistics.median(h0):.2f} baseline_drain_s={statistics.median(base):.2f} "
          f"ratio={ratio:.3f} lost={lost}")


if __name__ == "__main__":
    main()

"""Launch benchmark: time from "replicas = N" to N healthy replicas.

Hangar: a real Celery worker (with beat) reconciles a deployment of the
reference agent across two real Docker hosts after ``replicas`` is set to N.
Two baselines, in the same run, doing the same work — create, start, wait
until every replica answers its readiness probe — over the same two hosts:
a plain docker SDK loop (sequential), and the same loop with one thread per
host. Each N is measured ``--runs`` times (baselines and Hangar interleaved);
the summary gives medians and spread, and per N a line
``n=<N> ratio=<hangar / sequential> ratio_threaded=<hangar / threaded>``
(medians of the per-run ratios).

    .venv/bin/python bench/launch.py 20 60 --runs 3
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BENCH_DB = "hangar_bench"
os.environ.setdefault("DATABASE_URL", f"postgres://postgres@127.0.0.1:5432/{BENCH_DB}")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/13")
os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"


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


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def free_ports(count: int, start: int = 31000) -> list[int]:
    ports, port = [], start
    while len(ports) < count:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                ports.append(port)
            except OSError:
                pass
        port += 1
    return ports


# What a Hangar instance of the bench deployment gets, so both sides start the
# same agent: with OTLP export configured the agent loads the OpenTelemetry SDK
# before it listens, which costs CPU on every start.
AGENT_ENV = {
    "AGENT_MODE": "realtime",
    "OTEL_SERVICE_NAME": "bench.bench",
    "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:8000",
    "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer 1.bench",
}


def _launch(client, image: str, index: int, port: int):
    c = client.containers.create(
        image, name=f"bench-baseline-{index}", network_mode="host", detach=True,
        environment={**AGENT_ENV, "PORT": str(port)},
        labels={"bench": "baseline"}, nano_cpus=int(0.2e9), mem_limit="128m")
    c.start()
    return c


def baseline(urls: list[str], n: int, image: str, *, threaded: bool = False) -> float:
    """The docker SDK loop: sequential, or with one thread per host."""
    import docker

    clients = [docker.DockerClient(base_url=u) for u in urls]
    ports = free_ports(n)
    made: list = []
    shares = [[(i, port) for i, port in enumerate(ports) if i % len(clients) == k]
              for k in range(len(clients))]

    def host_loop(k: int) -> None:
        for i, port in shares[k]:
            made.append(_launch(clients[k], image, i, port))

    started = time.perf_counter()
    if threaded:
        threads = [threading.Thread(target=host_loop, args=(k,)) for k in range(len(clients))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    else:
        for i, port in enumerate(ports):
            made.append(_launch(clients[i % len(clients)], image, i, port))
    pending = set(ports)
    while pending:
        pending = {p for p in pending if not ready(p)}
        if pending:
            time.sleep(0.05)
    elapsed = time.perf_counter() - started
    for c in made:
        c.remove(force=True)
    for client in clients:
        client.close()
    return elapsed


class Hangar:
    """One deployment over the two hosts and a real worker (with beat)."""

    def __init__(self, urls: list[str], image: str):
        from deployments.models import Deployment, Policy
        from tests.factories import AgentFactory, TargetFactory, VersionFactory

        agent = AgentFactory(slug="bench")
        # The default team policy caps a deployment at 50 replicas.
        Policy.objects.update_or_create(team=agent.team, defaults={"max_replicas": 1000})
        version = VersionFactory(agent=agent, image=image, port=8080, cpu="0.2",
                                 memory_mb=128, env={"AGENT_MODE": "realtime"})
        targets = [TargetFactory(team=agent.team, name=f"docker-{i}", kind="docker",
                                 labels={"pool": "bench"}, connection={"url": u})
                   for i, u in enumerate(urls)]
        self.deployment = Deployment.objects.create(
            agent=agent, version=version, target=targets[0], replicas=0,
            placement={"pool": "bench"})
        self.log = Path(tempfile.mkdtemp()) / "worker.log"
        env = dict(os.environ, HANGAR_SWEEP_SECONDS="2")
        self.worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "controlplane", "worker", "--beat",
             "--concurrency=2", "--loglevel=WARNING", "--schedule", str(self.log) + ".beat"],
            cwd=ROOT, env=env, stdout=self.log.open("w"), stderr=subprocess.STDOUT,
            start_new_session=True)
        time.sleep(6)  # let the worker connect before any clock starts

    def launch(self, n: int) -> float:
        from deployments import actions
        from deployments.audit import SYSTEM
        from deployments.models import Instance

        deployment = self.deployment
        started = time.perf_counter()
        actions.scale_deployment(deployment, replicas=n, actor=SYSTEM)
        while True:
            healthy = Instance.objects.filter(deployment=deployment, health="Healthy").count()
            if healthy >= n:
                break
            if time.perf_counter() - started > 600:
                raise SystemExit(f"hangar did not converge:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
        actions.scale_deployment(deployment, replicas=0, actor=SYSTEM)
        deadline = time.monotonic() + 180
        while Instance.objects.filter(deployment=deployment).exists() and \
                time.monotonic() < deadline:
            time.sleep(0.5)
        return elapsed

    def close(self) -> None:
        os.killpg(self.worker.pid, signal.SIGTERM)
        self.worker.wait(timeout=60)


def spread(values: list[float]) -> str:
    return (f"median {statistics.median(values):.2f} (min {min(values):.2f}, "
            f"max {max(values):.2f}, n={len(values)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("n", type=int, nargs="*", default=[20, 60])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--image", default="hangar/reference-agent:latest")
    args = parser.parse_args()
    sh("scripts/docker-hosts.sh", "start", "2")
    urls = sh("scripts/docker-hosts.sh", "hosts", "2").split()
    sh("scripts/images.sh", "ensure", *urls)
    prepare_database()
    ours = Hangar(urls, args.image)
    results: dict[int, dict[str, list[float]]] = {
        n: {"sequential": [], "threaded": [], "hangar": []} for n in args.n}
    try:
        for run in range(1, args.runs + 1):
            for n in args.n:
                r = results[n]
                r["sequential"].append(baseline(urls, n, args.image))
                r["threaded"].append(baseline(urls, n, args.image, threaded=True))
                r["hangar"].append(ours.launch(n))
                print(f"run {run} n={n}: sequential {r['sequential'][-1]:.2f}s, threaded "
                      f"{r['threaded'][-1]:.2f}s, hangar {r['hangar'][-1]:.2f}s", flush=True)
    finally:
        ours.close()
    for n, r in results.items():
        seq = [h / b for h, b in zip(r["hangar"], r["sequential"], strict=True)]
        thr = [h / b for h, b in zip(r["hangar"], r["threaded"], strict=True)]
        print(f"n={n}: sequential {spread(r['sequential'])}; threaded {spread(r['threaded'])}; "
              f"hangar {spread(r['hangar'])}")
        print(f"n={n}: ratio vs sequential {spread(seq)}; vs threaded {spread(thr)}")
    for n, r in results.items():
        seq = [h / b for h, b in zip(r["hangar"], r["sequential"], strict=True)]
        thr = [h / b for h, b in zip(r["hangar"], r["threaded"], strict=True)]
        print(f"n={n} ratio={statistics.median(seq):.3f} "
              f"ratio_threaded={statistics.median(thr):.3f}")


if __name__ == "__main__":
    main()

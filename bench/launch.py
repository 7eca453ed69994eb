"""Launch benchmark: time from "replicas = N" to N healthy replicas.

Hangar: a real Celery worker (with beat) reconciles a deployment of the
reference agent across two real Docker hosts after ``replicas`` is set to N.
Baseline, in the same run: a plain docker SDK loop doing the same work —
create, start, wait until every replica answers its readiness probe — over
the same two hosts. The last line is ``ratio=<hangar s / baseline s>``.

    .venv/bin/python bench/launch.py 20
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
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


def baseline(urls: list[str], n: int, image: str) -> float:
    import docker

    clients = [docker.DockerClient(base_url=u) for u in urls]
    ports = free_ports(n)
    made = []
    started = time.perf_counter()
    for i, port in enumerate(ports):
        client = clients[i % len(clients)]
        c = client.containers.create(
            image, name=f"bench-baseline-{i}", network_mode="host", detach=True,
            environment={"PORT": str(port), "AGENT_MODE": "realtime"},
            labels={"bench": "baseline"}, nano_cpus=int(0.2e9), mem_limit="128m")
        c.start()
        made.append(c)
    pending = set(ports)
    while pending:
        pending = {p for p in pending if not ready(p)}
        if pending:
            time.sleep(0.05)
    elapsed = time.perf_counter() - started
    for c in made:
        c.remove(force=True)
    return elapsed


def hangar(urls: list[str], n: int, image: str) -> float:
    from deployments import actions
    from deployments.audit import SYSTEM
    from deployments.models import Deployment, Instance
    from tests.factories import AgentFactory, TargetFactory, VersionFactory

    agent = AgentFactory(slug="bench")
    version = VersionFactory(agent=agent, image=image, port=8080, cpu="0.2", memory_mb=128,
                             env={"AGENT_MODE": "realtime"})
    targets = [TargetFactory(team=agent.team, name=f"docker-{i}", kind="docker",
                             labels={"pool": "bench"}, connection={"url": u})
               for i, u in enumerate(urls)]
    deployment = Deployment.objects.create(agent=agent, version=version, target=targets[0],
                                           replicas=0, placement={"pool": "bench"})
    log = Path(tempfile.mkdtemp()) / "worker.log"
    env = dict(os.environ, HANGAR_SWEEP_SECONDS="2")
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "controlplane", "worker", "--beat",
         "--concurrency=2", "--loglevel=WARNING", "--schedule", str(log) + ".beat"],
        cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
        start_new_session=True)
    try:
        time.sleep(6)  # let the worker connect before the clock starts
        started = time.perf_counter()
        actions.scale_deployment(deployment, replicas=n, actor=SYSTEM)
        while True:
            healthy = Instance.objects.filter(deployment=deployment, health="Healthy").count()
            if healthy >= n:
                break
            if time.perf_counter() - started > 600:
                raise SystemExit(f"hangar did not converge:\n{log.read_text()[-3000:]}")
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
        actions.update_deployment(deployment, state="stopped", actor=SYSTEM)
        deadline = time.monotonic() + 120
        while Instance.objects.filter(deployment=deployment).exists() and \
                time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=60)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("n", type=int, nargs="?", default=20)
    parser.add_argument("--image", default="hangar/reference-agent:latest")
    args = parser.parse_args()
    sh("scripts/docker-hosts.sh", "start", "2")
    urls = sh("scripts/docker-hosts.sh", "hosts", "2").split()
    sh("scripts/images.sh", "ensure", *urls)
    prepare_database()
    base = baseline(urls, args.n, args.image)
    print(f"baseline: docker SDK loop, {args.n} replicas healthy in {base:.2f}s", flush=True)
    ours = hangar(urls, args.n, args.image)
    print(f"hangar: replicas={args.n} to {args.n} healthy in {ours:.2f}s", flush=True)
    print(f"ratio={ours / base:.3f}")


if __name__ == "__main__":
    main()

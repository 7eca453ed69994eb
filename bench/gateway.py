"""Gateway benchmark (#13): what the gateway adds, against the reference agent
with 3 replicas on a real Docker host, measured in the same run as a baseline.

(a) 100 concurrent clients for 20 s of small JSON invokes, through the gateway
    and directly to the replicas (client-side round robin): p50/p99 latency
    and requests/s of each — and, in the same run, through nginx (a C proxy,
    one worker, least connections, keep-alive; Debian's ``nginx-light``, skipped
    when missing): what any proxy adds on this machine. The paths take turns of
    5 s (``--slices``), so a drift in the machine's load hits them alike;
(b) 1,000 concurrent SSE streams of 60 s through the gateway: streams that did
    not arrive whole, and the gateway's peak RSS;
(c) cold start: zero replicas → first byte through the gateway, against a raw
    ``docker run`` of the same image and waiting until it is ready.

The load generators run in their own processes (``--load``/``--streams``), so
the clients do not share the gateway's event loop. The machine is shared and
noisy: run it several times and compare medians.

    .venv/bin/python bench/gateway.py [--seconds 20] [--clients 100]
                                      [--streams 1000] [--stream-s 60]

Last line: ``added_p50_ms=… added_p99_ms=… rps_ratio=… sse_dropped=… cold_ratio=…``
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
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
BENCH_DB = "hangar_bench_gateway"
STREAM_WORDS, STREAM_TOKENS = 60, 40
IMAGE = "hangar/reference-agent:latest"


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


# Load generators (child processes) -----------------------------------------------------

async def _load(urls: list[str], clients: int, seconds: float, headers: dict) -> dict:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds
    body = json.dumps({"input": "hello bench"}).encode()
    headers = {**headers, "Content-Type": "application/json"}
    # aiohttp, not httpx: httpx's pool scans every connection it holds on each
    # request, so with 100 connections the client, not the server, was measured.
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, headers=headers,
                                     timeout=aiohttp.ClientTimeout(total=30)) as client:
        async def worker(k: int) -> None:
            nonlocal errors
            n = k
            while time.monotonic() < deadline:
                url = urls[n % len(urls)]  # round robin when given several
                n += 1
                started = time.perf_counter()
                try:
                    async with client.post(url, data=body) as r:
                        await r.read()
                        if r.status != 200:
                            errors += 1
                            continue
                except (aiohttp.ClientError, TimeoutError):
                    errors += 1
                    continue
                latencies.append((time.perf_counter() - started) * 1000)
        began = time.monotonic()
        await asyncio.gather(*(worker(k) for k in range(clients)))
        took = time.monotonic() - began
    return {"p50": percentile(latencies, 50), "p99": percentile(latencies, 99),
            "rps": len(latencies) / took, "ok": len(latencies), "errors": errors,
            "took": took, "latencies": [round(v, 3) for v in latencies]}


def interleaved(paths: dict[str, list[str]], load: list[str], slices: int) -> dict[str, dict]:
    """Each path's load in ``slices`` turns, the paths taking turns (a, b, c, a, b,
    c, …), then merged: on a shared machine whose load drifts, no path gets the
    quiet minutes and another the busy ones."""
    clients, seconds, headers = load
    each = [str(clients), str(float(seconds) / slices), headers]
    parts: dict[str, list[dict]] = {name: [] for name in paths}
    for _ in range(slices):
        for name, urls in paths.items():
            parts[name].append(child("--load", [*each, *urls]))
    merged = {}
    for name, runs in parts.items():
        latencies = [v for r in runs for v in r["latencies"]]
        took = sum(r["took"] for r in runs)
        merged[name] = {"p50": percentile(latencies, 50), "p99": percentile(latencies, 99),
                        "rps": len(latencies) / took, "ok": len(latencies),
                        "errors": sum(r["errors"] for r in runs),
                        "slices_rps": [round(r["rps"]) for r in runs]}
    return merged


async def _streams(url: str, count: int, words: int, headers: dict) -> dict:
    import aiohttp

    text = " ".join(f"w{i}" for i in range(words))
    failures: dict[str, int] = {}
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector, headers=headers,
                                     timeout=aiohttp.ClientTimeout(total=None, connect=60,
                                                                   sock_read=120)) as client:
        async def one() -> bool:
            tokens, done, expected = 0, False, -1
            try:
                async with client.post(url, json={"input": text}) as r:
                    if r.status != 200:
                        failures[f"status {r.status}"] = failures.get(f"status {r.status}", 0) + 1
                        return False
                    async for raw in r.content:
                        line = raw.decode().rstrip("\r\n")
                        if line.startswith("event: done"):
                            done = True
                        elif line.startswith("data: ") and done:
                            expected = json.loads(line[6:])["usage"]["output_tokens"]
                        elif line.startswith("data: ") and '"token"' in line:
                            tokens += 1
            except (aiohttp.ClientError, TimeoutError) as exc:
                failures[type(exc).__name__] = failures.get(type(exc).__name__, 0) + 1
                return False
            if not (done and tokens == expected):
                failures["cut short"] = failures.get("cut short", 0) + 1
            return done and tokens == expected
        results = await asyncio.gather(*(one() for _ in range(count)))
    whole = sum(results)
    return {"whole": whole, "dropped": count - whole, "failures": failures}


# The bench ---------------------------------------------------------------------------

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


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def wait_ready(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not ready(port):
        if time.monotonic() > deadline:
            raise SystemExit(f"agent on {port} never got ready")
        time.sleep(0.02)


NGINX_CONF = """worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  upstream agents {{
    least_conn;
{servers}
    keepalive 128;
  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://agents;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }}
  }}
}}
"""


def start_nginx(ports: list[int], port: int, where: Path) -> subprocess.Popen | None:
    """A C proxy in front of the same replicas (least connections, keep-alive, one
    worker process like the gateway): what any proxy adds on this machine; its
    files in ``where``. Debian's ``nginx-light``; skipped when it is not installed."""
    import shutil

    binary = shutil.which("nginx", path=f"{os.environ.get('PATH', '')}:/usr/sbin")
    if binary is None:
        return None
    servers = "\n".join(f"    server 127.0.0.1:{p};" for p in ports)
    (where / "nginx.conf").write_text(NGINX_CONF.format(dir=where, servers=servers, port=port))
    process = subprocess.Popen([binary, "-p", str(where), "-c", str(where / "nginx.conf")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                               start_new_session=True)  # its own group: stop() kills it
    wait_ready(port)
    return process


def child(mode: str, args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, mode, *args], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def timeline(d, at: float, first_byte_s: float) -> str:
    """Where a cold start's time went, from the rows it left (seconds after arrival)."""
    from deployments.models import AuditEvent

    scaled = (AuditEvent.objects.filter(object_type="deployment", object_id=str(d.pk),
                                        actor_label="gateway", at__gte=_when(at))
              .order_by("at").values_list("at", flat=True).first())
    row = d.instances.order_by("-created_at").first()
    marks = [("woken", scaled), ("row", row and row.created_at),
             ("container started", row and row.started_at),
             ("marked ready", row and row.ready_at)]
    words = [f"{name} +{t.timestamp() - at:.2f}s" for name, t in marks if t is not None]
    return "cold start timeline: " + ", ".join(words) + f", first byte +{first_byte_s:.2f}s"


def _when(at: float):
    import datetime

    return datetime.datetime.fromtimestamp(at, tz=datetime.UTC)


def celery_worker(log: Path) -> subprocess.Popen:
    """``celery worker`` on the bench's database and broker (its queue emptied
    first: no pass left over from an earlier run), once it takes tasks."""
    import redis

    from tests.processes import database_env

    redis.Redis.from_url(os.environ["REDIS_URL"]).delete("celery")
    log.write_text("")
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "controlplane", "worker", "--pool=solo",
         "--without-gossip", "--without-mingle", "--loglevel=INFO"], cwd=ROOT,
        env=database_env(), stdout=log.open("ab"), stderr=subprocess.STDOUT,
        start_new_session=True)
    deadline = time.monotonic() + 60
    while "ready." not in log.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the Celery worker did not start:\n" + log.read_text()[-2000:])
        time.sleep(0.1)
    return process


def cold_starts(client, team, target, image: str, base: str, headers: dict, run_agent,
                repeat: int = 3) -> tuple[float, list[float], list[float], list[float]]:
    """Cold starts through the gateway; raw ``docker run``s of the same image with the
    environment and limits Hangar gave the instance (its OpenTelemetry exporter
    settings make the agent import the SDK before it listens, its 0.5 CPU slows
    that down: the agent's own start, not Hangar's); and raw runs with the bare
    environment and no limits, for reference."""
    from deployments.models import Deployment
    from deployments.reconciler import reconcile_deployment
    from tests.factories import AgentFactory, VersionFactory

    agent = AgentFactory(team=team, slug="sleepy")
    version = VersionFactory(agent=agent, image=image, env={"AGENT_MODE": "realtime"},
                             pattern_settings={"scale_to_zero_after_s": 1})
    d = Deployment.objects.create(agent=agent, version=version, target=target, replicas=0)
    url = base.replace("/ref/", "/sleepy/") + "/invoke"
    # A real Celery worker runs the passes the verbs enqueue (the gateway's wake-up
    # and scale-down), as in production: it takes the wake-up's task at once,
    # where a loop of passes every 0.1 s found it mid-pass 0.05–0.25 s later.
    worker = celery_worker(Path("/tmp/bench-gateway-worker.log"))
    from deployments.tasks import reconcile

    reconcile.delay(d.pk)  # a warm worker (modules loaded, Docker connected), as in production
    time.sleep(2)
    cold, raw, bare = [], [], []
    same_env: dict[str, str] = {}
    limits: dict = {}
    try:
        for _ in range(repeat):
            deadline = time.monotonic() + 120
            while (Deployment.objects.get(pk=d.pk).replicas != 0
                   or d.instances.exists()) and time.monotonic() < deadline:
                time.sleep(0.2)  # idle → scaled to zero → instances removed
            time.sleep(1)
            at, started = time.time(), time.perf_counter()
            request = urllib.request.Request(url, data=b'{"input": "wake"}', headers=headers)
            with urllib.request.urlopen(request, timeout=180) as answer:
                answer.read(1)
                cold.append(time.perf_counter() - started)
                answer.read()
            print("(c) " + timeline(d, at, cold[-1]), flush=True)
            row = d.instances.order_by("-created_at").first()
            if row is not None and row.runtime_id and not same_env:
                attrs = client.containers.get(row.runtime_id).attrs
                same_env = dict(item.split("=", 1) for item in attrs["Config"]["Env"] or []
                                if "=" in item)
                host = attrs["HostConfig"]
                limits = {k: v for k, v in (("nano_cpus", host.get("NanoCpus")),
                                            ("mem_limit", host.get("Memory"))) if v}
                for name in ("PORT", "AGENT_BIND", "HANGAR_INSTANCE", "PATH"):
                    same_env.pop(name, None)
        for i in range(repeat):
            for env, limited, into in ((same_env, limits, raw), ({}, {}, bare)):
                started = time.perf_counter()
                c, port = run_agent(f"raw-{i}-{len(env)}", limits=limited, **env)
                wait_ready(port)
                into.append(time.perf_counter() - started)
                c.remove(force=True)
    finally:
        from tests.processes import stop

        stop(worker)
        Deployment.objects.filter(pk=d.pk).update(state="stopped")
        for _ in range(3):
            reconcile_deployment(d.pk)
    return statistics.median(cold) / statistics.median(raw), cold, raw, bare


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--slices", type=int, default=4,
                        help="turns the paths of (a) take, each seconds/slices long")
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--stream-s", type=int, default=60)
    parser.add_argument("--parts", default="abc", help="which of (a), (b), (c) to run "
                        "(all by default; the last line needs all three)")
    opts = parser.parse_args()
    prepare()

    import docker
    import psutil

    from deployments import actions
    from deployments.audit import Actor
    from deployments.models import Instance
    from tests.docker_support import start_hosts
    from tests.factories import (
        AgentFactory,
        DeploymentFactory,
        MembershipFactory,
        TargetFactory,
        TeamFactory,
        UserFactory,
        VersionFactory,
    )
    from tests.gateway_support import start_gateway
    from tests.processes import database_env, free_port, stop

    url = start_hosts(1)[0]
    client = docker.DockerClient(base_url=url)
    team = TeamFactory(slug="bench")
    user = UserFactory(username="bench")
    MembershipFactory(team=team, user=user, role="admin")
    agent = AgentFactory(team=team, slug="ref")
    version = VersionFactory(agent=agent, image=IMAGE, env={"AGENT_MODE": "realtime"})
    target = TargetFactory(team=team, name="docker-0", kind="docker", connection={"url": url})
    deployment = DeploymentFactory(agent=agent, version=version, target=target, replicas=3)
    _, token = actions.create_token(team, name="bench", scope="read", expires_at=None,
                                    actor=Actor(user=user))
    headers = {"Authorization": f"Bearer {token}"}
    containers, ports = [], []

    def run_agent(name: str, limits: dict | None = None, **env) -> tuple:
        port = free_port()
        c = client.containers.run(IMAGE, name=f"bench-gw-{name}", network_mode="host",
                                  detach=True, labels={"bench": "gateway"}, **(limits or {}),
                                  environment={"AGENT_MODE": "realtime", "PORT": str(port),
                                               "AGENT_BIND": "127.0.0.1",
                                               "HANGAR_INSTANCE": name, **env})
        containers.append(c)
        return c, port

    for old in client.containers.list(all=True, filters={"label": "bench=gateway"}):
        old.remove(force=True)
    gateway = None
    try:
        # A 60-word input makes 40 output tokens: paced so a stream lasts stream_s.
        delay_ms = int(opts.stream_s * 1000 / STREAM_TOKENS)
        for i in range(3):
            _, port = run_agent(f"ref-{i}", AGENT_TOKEN_DELAY_MS=str(delay_ms))
            ports.append(port)
        for i, port in enumerate(ports):
            wait_ready(port)
            Instance.objects.create(deployment=deployment, target=target, name=f"ref-{i}",
                                    address=f"127.0.0.1:{port}", port=port, phase="running",
                                    health="Healthy", version=version)
        gw_port = free_port()
        gateway = start_gateway(gw_port, database_env(), Path("/tmp/bench-gateway.log"),
                                HANGAR_GATEWAY_RATE_PER_S="none",
                                HANGAR_GATEWAY_CONCURRENT="none",
                                HANGAR_GATEWAY_TRACE_WAIT_S="1")
        base = f"http://127.0.0.1:{gw_port}/gw/bench/ref/production"
        urllib.request.urlopen(urllib.request.Request(
            base + "/invoke", data=b'{"input": "warm"}', headers=headers), timeout=10).read()

        through = direct = {"p50": float("nan"), "p99": float("nan"), "rps": float("nan")}
        streams, cold_ratio = {"dropped": -1}, float("nan")
        if "a" in opts.parts:  # (a) small invokes
            load = [str(opts.clients), str(opts.seconds), json.dumps(headers)]
            paths = {"direct": [f"http://127.0.0.1:{p}/invoke" for p in ports],
                     "gateway": [base + "/invoke"]}
            # The same load through a C proxy, same run: what any hop costs here.
            nginx_port = free_port()
            with tempfile.TemporaryDirectory(prefix="bench-nginx-") as where:
                nginx = start_nginx(ports, nginx_port, Path(where))
                if nginx is not None:
                    paths["nginx"] = [f"http://127.0.0.1:{nginx_port}/invoke"]
                try:
                    measured = interleaved(paths, load, opts.slices)
                finally:
                    stop(nginx)
            direct, through, via = measured["direct"], measured["gateway"], measured.get("nginx")
            for name, m in (("direct ", direct), ("gateway", through)):
                print(f"(a) {name} p50={m['p50']:.2f}ms p99={m['p99']:.2f}ms "
                      f"rps={m['rps']:.0f} errors={m['errors']} (by turn {m['slices_rps']})")
            if via is None:
                print("(a) nginx   not installed (apt-get install nginx-light): skipped")
            else:
                print(f"(a) nginx   p50={via['p50']:.2f}ms p99={via['p99']:.2f}ms "
                      f"rps={via['rps']:.0f} errors={via['errors']} (by turn "
                      f"{via['slices_rps']}): added p50 {via['p50'] - direct['p50']:.2f}ms p99 "
                      f"{via['p99'] - direct['p99']:.2f}ms, rps ratio "
                      f"{via['rps'] / direct['rps']:.2f}")
            # What one hop costs when nothing queues (1 client): under 100 closed-loop
            # clients on a shared machine the added latency is mostly waiting for CPU.
            alone = [str(1), str(min(5.0, opts.seconds)), json.dumps(headers)]
            one = interleaved({"direct": paths["direct"], "gateway": paths["gateway"]}, alone, 2)
            direct1, through1 = one["direct"], one["gateway"]
            print(f"(a) 1 client: direct p50={direct1['p50']:.2f}ms p99={direct1['p99']:.2f}ms, "
                  f"gateway p50={through1['p50']:.2f}ms p99={through1['p99']:.2f}ms")

        if "b" in opts.parts:  # (b) long SSE streams, peak RSS of the gateway sampled meanwhile
            proc = psutil.Process(gateway.pid)
            peak = [proc.memory_info().rss]
            stop_sampling = threading.Event()

            def sample() -> None:
                while not stop_sampling.wait(0.2):
                    try:
                        peak.append(sum(p.memory_info().rss for p in
                                        [proc, *proc.children(recursive=True)]))
                    except psutil.Error:
                        return
            sampler = threading.Thread(target=sample)
            sampler.start()
            streams = child("--streams", [str(opts.streams), str(STREAM_WORDS), json.dumps(headers),
                                          base + "/invoke/stream"])
            stop_sampling.set()
            sampler.join()
            peak_mib = max(peak) / 2**20
            print(f"(b) {opts.streams} SSE streams of {opts.stream_s}s: "
                  f"{streams['whole']} whole, {streams['dropped']} dropped "
                  f"{streams['failures'] or ''}, gateway peak RSS {peak_mib:.0f} MiB")

        if "c" in opts.parts:
            # (c) cold start through the gateway (the reconciler driven in a loop, as a
            # worker would) against a raw docker run of the same image until ready
            cold_ratio, cold, raw, bare = cold_starts(client, team, target, version.image,
                                                      base, headers, run_agent)

            def figures(values: list[float]) -> str:
                return (f"{statistics.median(values):.2f}s "
                        f"({', '.join(f'{v:.2f}' for v in values)})")
            print(f"(c) cold start: zero → first byte median {figures(cold)}; raw docker "
                  f"run + ready, same environment and limits, median {figures(raw)}; bare "
                  f"environment, no limits, median {figures(bare)} (ratio to bare "
                  f"{statistics.median(cold) / statistics.median(bare):.2f})")
    finally:
        stop(gateway)
        for c in containers:
            with contextlib.suppress(docker.errors.NotFound):
                c.remove(force=True)
        client.close()
    added_p50 = through["p50"] - direct["p50"]
    added_p99 = through["p99"] - direct["p99"]
    print(f"added_p50_ms={added_p50:.2f} added_p99_ms={added_p99:.2f} "
          f"rps_ratio={through['rps'] / direct['rps']:.2f} sse_dropped={streams['dropped']} "
          f"cold_ratio={cold_ratio:.2f}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--load":
        clients, seconds, headers, *urls = sys.argv[2:]
        print(json.dumps(asyncio.run(_load(urls, int(clients), float(seconds),
                                           json.loads(headers)))))
    elif len(sys.argv) > 1 and sys.argv[1] == "--streams":
        count, words, headers, url = sys.argv[2:]
        print(json.dumps(asyncio.run(_streams(url, int(count), int(words),
                                              json.loads(headers)))))
    else:
        main()

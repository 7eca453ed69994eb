"""The REST API against its own OpenAPI document, fuzzed by schemathesis: a
real uvicorn process on PostgreSQL, every operation called as a team admin
with a bearer token, stateful chains from create to read/update/delete routes.

Every check is on (`--checks all`): no 5xx, no status code the operation does
not document, no schema-valid request rejected, no answer that breaks its
response schema, deleted resources gone, created ones readable."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from deployments import actions
from deployments.audit import Actor
from deployments.models import Membership, Policy

from .factories import (
    AgentFactory,
    DeploymentFactory,
    TargetFactory,
    TeamFactory,
    UserFactory,
    VersionFactory,
)
from .otlp_support import agent_trace, export
from .processes import ROOT, database_env, free_port, start_web, stop, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

# Every check schemathesis has but the response-time limit, which `all` turns
# on at 10 s: timing belongs in bench/ (one slow answer on a shared two-core
# machine is noise, not a bug).
CHECKS = ",".join((
    "not_a_server_error", "status_code_conformance", "content_type_conformance",
    "response_headers_conformance", "response_schema_conformance", "negative_data_rejection",
    "positive_data_acceptance", "missing_required_header", "unsupported_method",
    "allow_header_conformance", "use_after_free", "ensure_resource_availability",
    "ignored_auth", "object_level_authorization"))
# Per operation and phase; with four phases and ~45 operations this keeps the
# whole run within a couple of minutes on two cores.
MAX_EXAMPLES = int(os.environ.get("HANGAR_FUZZ_EXAMPLES", "15"))
SEED = os.environ.get("HANGAR_FUZZ_SEED", "20240917")


@pytest.fixture
def seeded():
    admin = UserFactory(username="fuzz-admin")
    team = TeamFactory(name="Fuzz team", slug="fuzz")
    # The policy allows whatever the schema does: its refusals are a team's
    # governance, tested in tests/test_policy.py, not a contract the fuzzer can see.
    Policy.objects.filter(team=team).update(max_replicas=1000)
    Membership.objects.create(team=team, user=admin, role="admin")
    agent = AgentFactory(team=team, slug="fuzz-bot", name="Fuzz bot", pattern="realtime")
    version = VersionFactory(agent=agent, number=1, image="", command=["true"], port=8080)
    target = TargetFactory(team=team, name="fuzz-local", kind="local")
    deployment = DeploymentFactory(agent=agent, version=version, target=target, state="paused",
                                   replicas=0)
    deployment.ingest_token = f"{deployment.pk}.fuzz-ingest-token-xxxxxxxxxxxxxxxx"
    deployment.save(update_fields=["ingest_token"])
    row, token = actions.create_token(team, name="fuzz", scope="admin", expires_at=None,
                                      actor=Actor(user=admin))
    stream = _stream_deployment(team, target)
    return {"token": token, "token_id": row.pk, "team_id": team.pk, "deployment": deployment,
            "stream": stream, "batch": _batch_rows(team, target, admin)}


def _batch_rows(team, target, admin) -> str:
    """A batch deployment with a schedule and a pending job run (no worker runs
    it): the ids the fuzz hooks point batch calls at."""
    agent = AgentFactory(team=team, slug="fuzz-batch", name="Fuzz batch", pattern="batch")
    version = VersionFactory(agent=agent, number=1, image="", command=["true"])
    deployment = DeploymentFactory(agent=agent, version=version, target=target, replicas=0)
    schedule = actions.create_schedule(deployment, {"name": "nightly", "cron": "30 2 * * *"},
                                       Actor(user=admin))
    run = actions.trigger_schedule(schedule, Actor(user=admin))
    return f"{deployment.pk},{schedule.pk},{run.pk}"


def _stream_deployment(team, target):
    """A stream deployment with dead letters on this run's Redis (the fuzz hooks
    point the dead-letter routes at it)."""
    from .stream_support import Keys

    keys = Keys()
    agent = AgentFactory(team=team, slug="fuzz-stream", name="Fuzz stream", pattern="stream")
    version = VersionFactory(agent=agent, number=1, image="", command=["true"],
                             pattern_settings=keys.settings())
    for n in range(5):
        keys.client.xadd(keys.deadletter, {
            "source_id": f"{n + 1}-0", "source_stream": keys.source, "group": keys.group,
            "input": "poison", "fields": json.dumps({"input": "poison", "n": n}),
            "error": "poison message", "deliveries": 5, "instance": "fuzz-consumer"})
    return DeploymentFactory(agent=agent, version=version, target=target, state="paused",
                             replicas=0), keys


@pytest.fixture
def server(tmp_path):
    import redis

    redis.Redis.from_url(os.environ["REDIS_URL"]).delete("celery")
    port = free_port()
    log = tmp_path / "web.log"
    web = start_web(port, database_env(), log)
    wait_for(f"http://127.0.0.1:{port}/healthz", web, log)
    yield {"base": f"http://127.0.0.1:{port}", "log": log}
    stop(web)


def _post_runs(base: str, deployment) -> None:
    for model, error in (("gpt-4o-mini", None), ("offline-echo", "model crashed")):
        body = export(agent_trace(model=model, error=error)).SerializeToString()
        answer = requests.post(f"{base}/v1/traces", data=body, timeout=10, headers={
            "Authorization": f"Bearer {deployment.ingest_token}",
            "Content-Type": "application/x-protobuf"})
        assert answer.status_code == 200, answer.text


def test_schemathesis_finds_nothing(seeded, server, tmp_path):
    base = server["base"]
    stream, keys = seeded["stream"]
    _post_runs(base, seeded["deployment"])
    schema = requests.get(f"{base}/api/v1/openapi.json", timeout=10).json()
    assert len(schema["paths"]) > 20

    report = tmp_path / "report"
    command = [
        str(Path(sys.executable).with_name("st")),
        "--config-file", str(ROOT / "tests" / "schemathesis.toml"),
        "run", f"{base}/api/v1/openapi.json",
        "--checks", CHECKS,
        "--phases", "examples,coverage,fuzzing,stateful",
        "--header", f"Authorization: Bearer {seeded['token']}",
        "--max-examples", str(MAX_EXAMPLES), "--seed", SEED,
        "--workers", "1", "--request-timeout", "30",
        "--suppress-health-check", "all",
        "--report", "ndjson", "--report-dir", str(report),
        "--output-truncate", "false",
    ]
    started = time.monotonic()
    env = {**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_TELEMETRY": "false",
           "PYTHONPATH": str(ROOT), "SCHEMATHESIS_HOOKS": "tests.fuzz_hooks",
           "HANGAR_FUZZ_TOKEN_ID": str(seeded["token_id"]),
           "HANGAR_FUZZ_TEAM_ID": str(seeded["team_id"]),
           "HANGAR_FUZZ_STREAM_DEPLOYMENT_ID": str(stream.pk),
           "HANGAR_FUZZ_BATCH": seeded["batch"]}
    try:
        run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True,
                             timeout=900, env=env)
    finally:
        keys.cleanup()
    elapsed = time.monotonic() - started
    output = run.stdout + run.stderr
    (tmp_path / "schemathesis.txt").write_text(output)
    server_log = server["log"].read_text()
    assert "Traceback" not in server_log, server_log[-5000:]
    assert run.returncode == 0, f"schemathesis failed after {elapsed:.0f}s:\n{output[-20000:]}"
    # It really exercised the API: every operation, and stateful chains that
    # follow links from what one call created to the calls that use it.
    assert re.search(r"Tested:\s+(\d+)", output).group(1) == str(operations(schema))
    links = int(re.search(r"API Links:\s+(\d+) covered", output).group(1))
    assert links >= 10, output[-3000:]
    events = [json.loads(line) for line in
              next(report.glob("*.ndjson")).read_text().splitlines() if line.strip()]
    assert events


def operations(schema: dict) -> int:
    return sum(len(methods) for methods in schema["paths"].values())

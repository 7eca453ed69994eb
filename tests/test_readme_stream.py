"""The README's stream example ("### Stream dead letters"), extracted from
README.md and run line by line in one shell against a fresh `scripts/run`, as
tests/test_readme_api.py runs the main example: the reference agent consumes a
Redis stream, dead-letters the poison message, and the API lists, inspects,
replays (dead-lettered again: this agent still fails it) and purges it."""
from __future__ import annotations

import json
import re
import uuid

import pytest
import redis

from .processes import ROOT, free_port, stop, wait_for
from .test_readme_api import ASSIGNMENT, run_in_one_shell
from .test_standalone import kill_local_agents, run_env, start

pytestmark = pytest.mark.slow


def readme_stream_commands(stream: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Stream dead letters"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "no bash block in the README's stream section"
    # A stream of this run's own on the same Redis db (the README's is "orders").
    body = block.group(1).replace('"stream": "orders"', f'"stream": "{stream}"') \
        .replace("XADD orders ", f"XADD {stream} ")
    return [line for line in body.splitlines() if line.strip()]


def test_readme_stream_example_works_on_a_fresh_standalone_server(tmp_path):
    stream = f"readme-{uuid.uuid4().hex[:8]}"
    commands = readme_stream_commands(stream)
    joined = "\n".join(commands)
    for step in ("/dead-letters?limit", "/dead-letters/$DEAD", "/replay", "/purge", "XADD"):
        assert step in joined, f"the README's stream example lost its {step} step"
    client = redis.Redis.from_url("redis://127.0.0.1:6379/0", decode_responses=True)
    data_dir = tmp_path / "var"
    port = free_port()
    process, log = start(data_dir, port)
    try:
        wait_for(f"http://127.0.0.1:{port}/healthz", process, log, timeout=300)
        results = run_in_one_shell(commands, run_env(data_dir, port))
        values: dict[str, str] = {}
        answers: dict[str, dict] = {}
        for command, (status, output) in zip(commands, results, strict=True):
            assert status == 0, (command, output, log.read_text()[-3000:])
            assigned = ASSIGNMENT.match(command)
            if assigned:
                values[assigned.group(1)] = output
                if "$(curl" in command:
                    assert output.strip(), (command, output)
                continue
            if command.startswith("curl"):
                answer = json.loads(output)
                assert "detail" not in answer, (command, answer)
                answers[command.split('"$API/', 1)[1].split('"', 1)[0]] = answer
        page = answers["deployments/$DEPLOYMENT/dead-letters?limit=20"]
        assert page["count"] == 1 and page["items"][0]["input"] == "poison"
        assert page["items"][0]["deliveries"] == 2 and "poison" in page["items"][0]["error"]
        one = answers["deployments/$DEPLOYMENT/dead-letters/$DEAD"]
        assert one["id"] == values["DEAD"] and one["source_stream"] == stream
        replayed = answers["deployments/$DEPLOYMENT/dead-letters/replay"]
        assert replayed["replayed"] == 1 and replayed["ids"] == [values["DEAD"]]
        assert answers["deployments/$DEPLOYMENT/dead-letters/purge"] == {"purged": 1}
        assert client.xlen(f"{stream}:deadletter") == 0
    finally:
        stop(process)
        kill_local_agents(data_dir)
        for key in client.scan_iter(f"{stream}*"):
            client.delete(key)
        client.close()

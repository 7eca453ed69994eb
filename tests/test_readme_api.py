"""The README's API example, extracted from README.md and run line by line in
one shell, in order, against a fresh `scripts/run`: every answer is checked,
and the deployment it creates becomes healthy on the local target."""
from __future__ import annotations

import json
import re
import subprocess
import time

import pytest
import requests

from .processes import ROOT, free_port, stop, wait_for
from .test_standalone import kill_local_agents, run_env, start

pytestmark = pytest.mark.slow

MARK = "<<<hangar-readme-step"
ASSIGNMENT = re.compile(r"^(?:export\s+)?([A-Z_]+)=")


def readme_api_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## The API"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "no bash block in the README's API section"
    return [line for line in block.group(1).splitlines() if line.strip()]


def run_in_one_shell(commands: list[str], env: dict) -> list[tuple[int, str]]:
    """Each command's exit status and output (for an assignment: the value)."""
    script = []
    for number, command in enumerate(commands):
        script.append(command)
        script.append(f'status=$?; printf "\\n{MARK} {number} %s>>>\\n" "$status"')
        assigned = ASSIGNMENT.match(command)
        if assigned:
            script.append(f'printf "%s\\n" "${{{assigned.group(1)}}}"')
    done = subprocess.run(["bash", "-c", "\n".join(script)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    results: dict[int, tuple[int, str]] = {}
    text = done.stdout
    position = 0
    for number, command in enumerate(commands):
        match = re.compile(rf"\n?{MARK} {number} (\d+)>>>\n").search(text, position)
        assert match, f"step {number} ({command!r}) never finished:\n{done.stderr}"
        before = text[position:match.start()]
        position = match.end()
        if ASSIGNMENT.match(command):
            end = text.find("\n", position)
            before, position = text[position:end], end + 1
        results[number] = (int(match.group(1)), before.strip())
    return [results[n] for n in range(len(commands))]


def test_readme_api_example_works_on_a_fresh_standalone_server(tmp_path):
    commands = readme_api_commands()
    joined = "\n".join(commands)
    for step in ("create_token", "-X POST \"$API/agents\"", "/versions", "\"$API/deployments\"",
                 "-X PATCH"):
        assert step in joined, f"the README's example lost its {step} step"
    data_dir = tmp_path / "var"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process, log = start(data_dir, port)
    try:
        wait_for(f"{base}/healthz", process, log, timeout=300)
        results = run_in_one_shell(commands, run_env(data_dir, port))
        values: dict[str, str] = {}
        for command, (status, output) in zip(commands, results, strict=True):
            assert status == 0, (command, output)
            assigned = ASSIGNMENT.match(command)
            if assigned:
                values[assigned.group(1)] = output
                if "create_token" in command:
                    assert re.fullmatch(r"hgr_[0-9a-f]+_\S+", output), output
                elif "$(curl" in command:
                    assert output.isdigit(), (command, output)
                continue
            if not command.startswith("curl"):
                continue
            answer = json.loads(output)
            assert "detail" not in answer, (command, answer)
            if "?pattern=realtime" in command:
                assert "demo-assistant" in {a["slug"] for a in answer["items"]}
            if "-X PATCH" in command:
                assert answer["replicas"] == 3
            if command.endswith('"$API/deployments/$DEPLOYMENT"'):
                assert answer["id"] == int(values["DEPLOYMENT"])
            if command.endswith("/instances\""):
                assert "items" in answer
        assert values["API"] == f"{base}/api/v1"

        # What it created converges: three healthy replicas of the reference agent.
        headers = {"Authorization": f"Bearer {values['HANGAR_TOKEN']}"}
        deployment_url = f"{base}/api/v1/deployments/{values['DEPLOYMENT']}"
        deadline = time.monotonic() + 120
        while True:
            deployment = requests.get(deployment_url, headers=headers, timeout=10).json()
            if deployment["health"] == "Healthy" and deployment["replicas"] == 3:
                break
            assert time.monotonic() < deadline, (
                deployment["health"], deployment["health_reason"], deployment["replicas"],
                log.read_text()[-4000:])
            time.sleep(1)
        assert deployment["health_reason"] == "3 of 3 replicas healthy"
        instances = requests.get(f"{deployment_url}/instances", headers=headers,
                                 timeout=10).json()["items"]
        assert len(instances) == 3
        answer = requests.post(f"http://{instances[0]['address']}/invoke",
                               json={"input": "hello"}, timeout=10)
        assert answer.status_code == 200 and answer.json()["output"]
    finally:
        stop(process)
        kill_local_agents(data_dir)

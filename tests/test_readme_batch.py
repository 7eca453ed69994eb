"""The README's batch example ("### Batch schedules"), extracted from README.md
and run line by line in one shell against a fresh `scripts/run`, as
tests/test_readme_api.py runs the main example: every answer is checked, and
the run it triggers by hand finishes on the local target with the agent's
output."""
from __future__ import annotations

import json
import re
import time
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
import requests

from .processes import ROOT, free_port, stop, wait_for
from .test_readme_api import ASSIGNMENT, run_in_one_shell
from .test_standalone import kill_local_agents, run_env, start

pytestmark = pytest.mark.slow


def readme_batch_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Batch schedules"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "no bash block in the README's batch section"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_batch_example_works_on_a_fresh_standalone_server(tmp_path):
    commands = readme_batch_commands()
    joined = "\n".join(commands)
    for step in ('"$API/schedules"', "/trigger", "/job-runs/", "/runs?", "/suspend"):
        assert step in joined, f"the README's batch example lost its {step} step"
    data_dir = tmp_path / "var"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process, log = start(data_dir, port)
    try:
        wait_for(f"{base}/healthz", process, log, timeout=300)
        results = run_in_one_shell(commands, run_env(data_dir, port))
        values: dict[str, str] = {}
        answers: dict[str, dict] = {}
        for command, (status, output) in zip(commands, results, strict=True):
            assert status == 0, (command, output)
            assigned = ASSIGNMENT.match(command)
            if assigned:
                values[assigned.group(1)] = output
                if "$(curl" in command:
                    assert output.isdigit(), (command, output)
                continue
            if command.startswith("curl"):
                answer = json.loads(output)
                assert "detail" not in answer, (command, answer)
                answers[command.rsplit(" ", 1)[-1]] = answer
        schedule = answers['"$API/schedules/$SCHEDULE"']
        paris = ZoneInfo("Europe/Paris")
        firings = [datetime.fromisoformat(t) for t in schedule["next_runs"]]
        assert len(firings) == 5
        assert all(t.utcoffset() == t.astimezone(paris).utcoffset() for t in firings)
        assert {(t.hour, t.minute) for t in firings} <= {(2, 30), (3, 30)}
        history = answers['"$API/schedules/$SCHEDULE/runs?trigger=manual"']
        assert [r["id"] for r in history["items"]] == [int(values["RUN"])]
        assert answers['"$API/schedules/$SCHEDULE/suspend"']["suspended"] is True

        # The run triggered by hand finishes on the local target, with the output.
        headers = {"Authorization": f"Bearer {values['HANGAR_TOKEN']}"}
        url = f"{base}/api/v1/job-runs/{values['RUN']}"
        deadline = time.monotonic() + 120
        while True:
            run = requests.get(url, headers=headers, timeout=10).json()
            if run["status"] not in ("pending", "running"):
                break
            assert time.monotonic() < deadline, run
            time.sleep(1)
        assert run["status"] == "succeeded", (run, log.read_text()[-3000:])
        assert run["exit_code"] == 0 and run["output"]["items"] == 2
        assert run["duration_s"] is not None and run["trigger"] == "manual"
    finally:
        stop(process)
        kill_local_agents(data_dir)

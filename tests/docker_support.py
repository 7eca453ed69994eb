"""Real Docker daemons for the tests: two hosts on this machine."""
from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "hangar/reference-agent:latest"


def script(*args: str, timeout: float = 900) -> str:
    result = subprocess.run(["bash", *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def start_hosts(count: int = 2) -> list[str]:
    script("scripts/docker-hosts.sh", "start", str(count))
    urls = script("scripts/docker-hosts.sh", "hosts", str(count)).split()
    script("scripts/images.sh", "ensure", *urls)
    return urls


def restart_host(index: int) -> None:
    script("scripts/docker-hosts.sh", "restart", str(index), timeout=180)

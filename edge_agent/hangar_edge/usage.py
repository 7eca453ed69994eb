"""CPU and memory of the supervised process, from ``/proc`` (Linux) or
``ps`` (macOS and other POSIX systems); stdlib only."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class Usage:
    def __init__(self):
        self.pid: int | None = None
        self._last: tuple[float, float] | None = None  # (wall, cpu seconds)

    def follow(self, pid: int) -> None:
        self.pid, self._last = pid, None

    def sample(self, pid: int | None) -> dict[str, float | int]:
        """``{"cpu_percent", "memory_bytes"}`` of ``pid`` since the last sample."""
        if pid is None:
            return {"cpu_percent": 0.0, "memory_bytes": 0}
        if pid != self.pid:
            self.follow(pid)
        cpu, rss = _read(pid)
        wall = time.monotonic()
        percent = 0.0
        if self._last is not None and wall > self._last[0]:
            percent = max(0.0, (cpu - self._last[1]) / (wall - self._last[0]) * 100)
        self._last = (wall, cpu)
        return {"cpu_percent": round(percent, 1), "memory_bytes": rss}


def _read(pid: int) -> tuple[float, int]:
    proc = Path(f"/proc/{pid}")
    try:
        if proc.exists():
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            cpu = (int(fields[11]) + int(fields[12])) / _TICK
            rss = int((proc / "statm").read_text().split()[1]) * _PAGE
            return cpu, rss
        out = subprocess.run(["ps", "-o", "time=,rss=", "-p", str(pid)], capture_output=True,
                             text=True, timeout=5).stdout.split()
        if len(out) == 2:
            parts = [float(p) for p in out[0].replace("-", ":").split(":")]
            seconds = 0.0
            for part in parts:
                seconds = seconds * 60 + part
            return seconds, int(out[1]) * 1024
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        pass
    return 0.0, 0

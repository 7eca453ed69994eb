"""The bundle's program as a supervised process.

``set(target)`` says what should run (``None``: nothing); ``tick()``, called by
the agent's loop, starts it, notices when it exits and restarts it after a
backoff that doubles with every consecutive crash (``backoff_initial`` …
``backoff_max`` clock seconds) and resets once a start has stayed up for
``stable_after`` seconds. Every exit is handed to ``on_exit`` as a run record.

Health, in Argo CD's words: ``Healthy`` once up for ``stable_after``,
``Progressing`` while a first start is young, ``Degraded`` after a crash until
a start proves stable again, ``Missing`` when nothing is meant to run."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .clock import Clock
from .usage import Usage

log = logging.getLogger("hangar_edge.supervisor")
LOG_CAP = 5 * 1024 * 1024


@dataclass(frozen=True)
class Target:
    digest: str
    version: str
    argv: list[str]
    cwd: Path
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Exit:
    """One process lifetime: the run record the agent buffers."""

    target: Target
    started_at: float
    ended_at: float
    code: int | None
    restarts: int
    last_line: str = ""
    stopped: bool = False  # by the agent (a new bundle, quarantine, shutdown)

    @property
    def crashed(self) -> bool:
        return not self.stopped and self.code != 0


class Supervisor:
    def __init__(self, clock: Clock, log_dir: Path, *, on_exit: Callable[[Exit], None],
                 on_change: Callable[[], None] = lambda: None, stable_after: float = 30.0,
                 backoff_initial: float = 1.0, backoff_max: float = 300.0,
                 stop_grace: float = 5.0):
        self.clock = clock
        self.log_dir = log_dir
        self.on_exit = on_exit
        self.on_change = on_change
        self.stable_after = stable_after
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.stop_grace = stop_grace
        self.usage = Usage()
        self._lock = threading.RLock()
        self._target: Target | None = None
        self._process: subprocess.Popen | None = None
        self._started_at = 0.0
        self._next_start = 0.0
        self.failures = 0  # consecutive crashes
        self.restarts = 0  # starts of the current target after its first
        self.last_error = ""

    # What should run ----------------------------------------------------------------------

    @property
    def target(self) -> Target | None:
        return self._target

    def set(self, target: Target | None) -> None:
        with self._lock:
            if target == self._target:
                return
            self._stop_process(record=True)
            self._target = target
            self.failures = self.restarts = 0
            self.last_error = ""
            self._next_start = self.clock.now()
        self.on_change()

    # The loop -------------------------------------------------------------------------------

    def tick(self) -> None:
        changed = False
        with self._lock:
            now = self.clock.now()
            process = self._process
            if process is not None and process.poll() is not None:
                self._record_exit(process.returncode, now)
                self._process = None
                changed = True
            elif process is not None and self.failures and now - self._started_at >= \
                    self.stable_after:
                self.failures = 0  # up long enough: the crash loop is over
                self.last_error = ""
                changed = True
            if self._process is None and self._target is not None and now >= self._next_start:
                self._start(now)
                changed = True
        if changed:
            self.on_change()

    def _start(self, now: float) -> None:
        target = self._target
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{target.version or target.digest[:12]}.log"
        if log_path.exists() and log_path.stat().st_size > LOG_CAP:
            log_path.replace(log_path.with_suffix(".log.1"))
        env = {**os.environ, **target.env}
        try:
            with log_path.open("ab") as out:
                self._process = subprocess.Popen(
                    target.argv, cwd=target.cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                    stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as exc:
            self.last_error = f"cannot start {target.argv[0]}: {exc}"
            log.warning("%s", self.last_error)
            self._process = None
            self._crashed(now)
            self.on_exit(Exit(target, now, now, None, self.restarts, self.last_error))
            return
        self._started_at = now
        self.usage.follow(self._process.pid)
        log.info("started %s (pid %s): %s", target.version, self._process.pid,
                 " ".join(target.argv))

    def _crashed(self, now: float) -> None:
        self.failures += 1
        delay = min(self.backoff_max, self.backoff_initial * 2 ** (self.failures - 1))
        self._next_start = now + delay

    def _record_exit(self, code: int, now: float) -> None:
        target = self._target
        last = _last_line(self.log_dir / f"{target.version or target.digest[:12]}.log")
        if code != 0:
            self.last_error = f"exited with code {code}" + (f": {last}" if last else "")
            self._crashed(now)
            log.warning("%s %s", target.version, self.last_error)
        else:
            self._next_start = now + self.backoff_initial
        self.restarts += 1
        self.on_exit(Exit(target, self._started_at, now, code, self.restarts - 1, last))

    def _stop_process(self, *, record: bool) -> None:
        process = self._process
        if process is None:
            return
        if process.poll() is not None and record and self._target is not None:
            # It ended on its own before the tick noticed: that exit, not a stop.
            self._record_exit(process.returncode, self.clock.now())
            self._process = None
            return
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=self.stop_grace)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            except ProcessLookupError:
                process.wait()
        if record and self._target is not None:
            self.on_exit(Exit(self._target, self._started_at, self.clock.now(),
                              process.returncode, self.restarts, "stopped by the agent",
                              stopped=True))
        self._process = None

    def stop(self) -> None:
        with self._lock:
            self._stop_process(record=False)

    # What is running ----------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    def health(self) -> str:
        with self._lock:
            if self._target is None:
                return "Missing"
            if self.failures:
                return "Degraded"
            if self._process is None:
                return "Progressing"
            if self.clock.now() - self._started_at >= self.stable_after:
                return "Healthy"
            return "Progressing"

    def phase(self) -> str:
        with self._lock:
            if self._target is None:
                return "idle"
            if self._process is not None and self._process.poll() is None:
                return "running"
            return "crashlooping" if self.failures else "starting"


def _last_line(path: Path) -> str:
    try:
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - 2000))
            lines = [line for line in f.read().decode(errors="replace").splitlines()
                     if line.strip()]
    except OSError:
        return ""
    return lines[-1].strip()[:300] if lines else ""


if sys.platform == "win32":  # pragma: no cover - the agent targets POSIX devices
    raise ImportError("hangar-edge supervises processes with POSIX sessions")

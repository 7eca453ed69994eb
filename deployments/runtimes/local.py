"""Local driver: supervised subprocesses on the control-plane machine.

Each instance is a process group started in its own session, so it outlives
the worker that started it. Its state (pid, process start time, port, labels)
is a JSON file under the work directory; any later worker re-adopts it from
there. A small shell wrapper records the exit code for the reconciler, which
decides restarts with backoff like for every other driver.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psutil
from django.conf import settings

from .base import (
    LABEL_GENERATION,
    LABEL_INSTANCE,
    LABEL_PORT,
    LABEL_VERSION,
    Features,
    InstanceSpec,
    JobResult,
    JobState,
    ObservedInstance,
    Runtime,
    RuntimeFailure,
    Usage,
    loopback_port_free,
)

# The wrapper runs the command and writes its exit status next to the state.
WRAPPER = '"$@"; code=$?; echo "$code" > "$HANGAR_EXIT_FILE.tmp"; ' \
          'mv "$HANGAR_EXIT_FILE.tmp" "$HANGAR_EXIT_FILE"; exit "$code"'
INHERITED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "PYTHONPATH", "VIRTUAL_ENV", "TMPDIR")


class LocalFeatures(Features):
    supports_log_follow = True
    supports_resource_usage = True
    supports_jobs = True
    supports_health_probe = True
    lists_orphans = True


def _proc_start_time(pid: int) -> str | None:
    """When the process started, as text; guards against pid reuse. None for
    a process that is gone (a zombie child is reaped)."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            try:
                os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
            except ChildProcessError:
                pass
            return None
        return _start_ticks(process)
    except psutil.Error:
        return None


def _start_ticks(process: psutil.Process) -> str:
    """Clock ticks from boot to the process's start (``/proc/<pid>/stat``),
    fixed for the process's life. psutil's ``create_time()`` adds the boot
    time to it, and the kernel's boot time is the wall clock minus the uptime:
    it moves whenever the clock is adjusted (NTP, a VM's clock sync). A start
    time recorded as that sum stopped matching a process that was still
    running, which then counted as dead: restarted beside itself (its port
    still taken), a job failed as killed, ``scripts/run stop`` leaving it up."""
    try:
        with open(f"/proc/{process.pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[19].decode()
    except FileNotFoundError:
        if os.path.isdir("/proc"):
            raise psutil.NoSuchProcess(process.pid) from None
        return repr(process.create_time())  # no /proc (not Linux): psutil's own


def _same_process(started: str | None, recorded: str | None) -> bool:
    if started is None or not recorded:
        return False
    if "." in recorded and "." not in started:
        # Recorded by an earlier Hangar as psutil's epoch time: compare as
        # epoch times, allowing for a clock adjusted since by less than 2 s.
        epoch = int(started) / os.sysconf("SC_CLK_TCK") + psutil.boot_time()
        return abs(epoch - float(recorded)) < 2
    return started == recorded


class LocalRuntime(Runtime):
    features = LocalFeatures()

    def __init__(self, target):
        super().__init__(target)
        workdir = self.connection.get("workdir") or Path(settings.DATA_DIR) / "local-runtime"
        self.root = Path(workdir)

    def ping(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RuntimeFailure(f"work directory {self.root}: {exc}", permanent=True) from None

    def port_space(self) -> str:
        return "this-machine:127.0.0.1"  # processes listen on this machine's loopback

    def port_free(self, port: int) -> bool:
        return loopback_port_free("127.0.0.1", port)

    def _dir(self, deployment_id: int, name: str) -> Path:
        return self.root / f"deployment-{deployment_id}" / name

    def _read(self, folder: Path) -> dict | None:
        try:
            return json.loads((folder / "state.json").read_text())
        except (OSError, ValueError):
            return None

    def _alive(self, state: dict) -> bool:
        return _same_process(_proc_start_time(state["pid"]), state.get("proc_start"))

    def _command(self, spec: InstanceSpec) -> list[str]:
        command = list(spec.command)
        if not command:
            raise RuntimeFailure("the local runtime needs a command", permanent=True)
        if command[0] in ("python", "python3"):
            command[0] = sys.executable
        return command

    def _spawn(self, spec: InstanceSpec, folder: Path, previous: dict | None) -> dict:
        folder.mkdir(parents=True, exist_ok=True)
        exit_file = folder / "exit_code"
        exit_file.unlink(missing_ok=True)
        env = {k: os.environ[k] for k in INHERITED_ENV if k in os.environ}
        env.update(spec.env)
        env["HANGAR_EXIT_FILE"] = str(exit_file)
        if spec.port:
            env["PORT"] = str(spec.port)
        command = self._command(spec)
        log = (folder / "output.log").open("ab")
        try:
            process = subprocess.Popen(
                ["/bin/sh", "-c", WRAPPER, "hangar-wrapper", *command], cwd=settings.BASE_DIR,
                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            raise RuntimeFailure(f"cannot start {command[0]}: {exc}", permanent=True) from None
        finally:
            log.close()
        labels = spec.labels()
        if spec.port:
            labels[LABEL_PORT] = str(spec.port)
        state = {
            "pid": process.pid,
            "proc_start": _proc_start_time(process.pid),
            "labels": labels,
            "port": spec.port,
            "command": command,
            "started_at": datetime.now(UTC).isoformat(),
            "starts": (previous or {}).get("starts", 0) + 1,
        }
        tmp = folder / "state.json.tmp"
        tmp.write_text(json.dumps(state))
        tmp.replace(folder / "state.json")
        return state

    def ensure_instance(self, spec: InstanceSpec) -> ObservedInstance:
        folder = self._dir(spec.deployment_id, spec.name)
        state = self._read(folder)
        if state is None or not self._alive(state):
            state = self._spawn(spec, folder, state)
        return self._observe(folder, state)

    def remove_instance(self, deployment_id: int, name: str) -> None:
        folder = self._dir(deployment_id, name)
        state = self._read(folder)
        if state is not None and self._alive(state):
            self._terminate(state["pid"])
        shutil.rmtree(folder, ignore_errors=True)

    @staticmethod
    def _terminate(pid: int) -> None:
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if _proc_start_time(pid) is None:
                return
            time.sleep(0.1)
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def list_instances(self, deployment_id: int) -> list[ObservedInstance]:
        base = self.root / f"deployment-{deployment_id}"
        if not base.is_dir():
            return []
        observed = []
        for folder in sorted(base.iterdir()):
            state = self._read(folder)
            if state is not None and not folder.name.startswith("job-"):
                observed.append(self._observe(folder, state))
        return observed

    def managed_deployment_ids(self) -> set[int]:
        if not self.root.is_dir():
            return set()
        return {int(p.name.split("-", 1)[1]) for p in self.root.glob("deployment-*")
                if p.name.split("-", 1)[1].isdigit() and any(p.iterdir())}

    def _observe(self, folder: Path, state: dict) -> ObservedInstance:
        labels = state["labels"]
        alive = self._alive(state)
        exit_code = None
        if not alive:
            try:
                exit_code = int((folder / "exit_code").read_text().strip())
            except (OSError, ValueError):
                exit_code = -9  # killed before the wrapper could record it
        port = state.get("port")
        return ObservedInstance(
            name=labels[LABEL_INSTANCE],
            runtime_id=f"pid:{state['pid']}",
            generation=int(labels.get(LABEL_GENERATION, 0)),
            version=labels.get(LABEL_VERSION, ""),
            phase="running" if alive else "exited",
            host=self.target.name,
            address=f"127.0.0.1:{port}" if port else "",
            port=port,
            exit_code=exit_code,
            started_at=datetime.fromisoformat(state["started_at"]),
            message="" if alive else f"exited with code {exit_code}",
        )

    # Work and observation -----------------------------------------------------
    def run_job(self, spec: InstanceSpec, *, timeout_s: float) -> JobResult:
        folder = self._dir(spec.deployment_id, f"job-{spec.name}")
        started = datetime.now(UTC)
        state = self._spawn(spec, folder, None)
        deadline = time.monotonic() + timeout_s
        timed_out = False
        while self._alive(state):
            if time.monotonic() > deadline:
                timed_out = True
                self._terminate(state["pid"])
                break
            time.sleep(0.1)
        observed = self._observe(folder, state)
        logs = (folder / "output.log").read_text(errors="replace")
        shutil.rmtree(folder, ignore_errors=True)
        return JobResult(exit_code=-1 if timed_out else observed.exit_code or 0, logs=logs,
                         started_at=started, finished_at=datetime.now(UTC), timed_out=timed_out)

    # Batch jobs (level-triggered) --------------------------------------------
    # A job is a process group like an instance, in a folder whose name starts
    # with "job-" (so list_instances skips it); the folder outlives the process
    # and holds its exit code and output until remove_job.
    def _job_dir(self, deployment_id: int, name: str) -> Path:
        return self._dir(deployment_id, name if name.startswith("job-") else f"job-{name}")

    def start_job(self, spec: InstanceSpec, *, timeout_s: float | None = None) -> JobState:
        folder = self._job_dir(spec.deployment_id, spec.name)
        state = self._read(folder)
        if state is None:
            state = self._spawn(spec, folder, None)
        return self._job_state(folder, state)

    def _job_state(self, folder: Path, state: dict) -> JobState:
        observed = self._observe(folder, state)
        exited = observed.phase != "running"
        finished = None
        if exited:
            try:
                finished = datetime.fromtimestamp((folder / "exit_code").stat().st_mtime, UTC)
            except OSError:
                finished = None
        return JobState(name=observed.name, phase="exited" if exited else "running",
                        exit_code=observed.exit_code if exited else None,
                        started_at=observed.started_at, finished_at=finished,
                        message=observed.message)

    def list_jobs(self, deployment_id: int) -> dict[str, JobState]:
        base = self.root / f"deployment-{deployment_id}"
        if not base.is_dir():
            return {}
        jobs = {}
        for folder in sorted(base.glob("job-*")):
            state = self._read(folder)
            if state is not None:
                job = self._job_state(folder, state)
                jobs[job.name] = job
        return jobs

    def job_logs(self, deployment_id: int, name: str, *, tail: int = 200) -> str:
        path = self._job_dir(deployment_id, name) / "output.log"
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-tail:]) + ("\n" if lines else "")

    def remove_job(self, deployment_id: int, name: str) -> None:
        folder = self._job_dir(deployment_id, name)
        state = self._read(folder)
        if state is not None and self._alive(state):
            self._kill(state["pid"])
        shutil.rmtree(folder, ignore_errors=True)

    @staticmethod
    def _kill(pid: int) -> None:
        """SIGKILL the job's process group (a timeout or a cancel: no grace)."""
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _proc_start_time(pid) is not None:
            time.sleep(0.05)

    def logs(self, deployment_id: int, name: str, *, tail: int = 100,
             follow: bool = False) -> Iterator[str | None]:
        path = self._dir(deployment_id, name) / "output.log"
        if not path.exists():
            raise RuntimeFailure(f"instance {name} has no logs here", permanent=True)
        with path.open("rb") as fh:
            lines = fh.read().decode(errors="replace").splitlines()
            yield from lines[-tail:] if tail else lines
            idle = 0
            while follow:
                line = fh.readline()
                if line:
                    idle = 0
                    yield line.decode(errors="replace").rstrip("\n")
                else:
                    time.sleep(0.2)
                    idle += 1
                    if idle % 5 == 0:
                        yield None  # an idle tick: the caller may stop or send a heartbeat

    def usage(self, deployment_id: int, name: str) -> Usage | None:
        state = self._read(self._dir(deployment_id, name))
        if state is None or not self._alive(state):
            return None
        try:
            process = psutil.Process(state["pid"])
            first, started = _cpu_seconds(process), time.monotonic()
            time.sleep(0.2)
            used = _cpu_seconds(process) - first
            memory = sum(_rss(p) for p in [process, *_descendants(process)])
        except psutil.Error:
            return None
        return Usage(cpu_percent=round(used / (time.monotonic() - started) * 100, 2),
                     memory_bytes=memory)


def _descendants(process: psutil.Process) -> list[psutil.Process]:
    try:
        return process.children(recursive=True)
    except psutil.Error:
        return []


def _cpu_seconds(process: psutil.Process) -> float:
    """User and system CPU time of the process and its descendants alive now."""
    total = 0.0
    for member in [process, *_descendants(process)]:
        try:
            times = member.cpu_times()
        except psutil.Error:
            continue  # exited meanwhile
        total += times.user + times.system
    return total


def _rss(process: psutil.Process) -> int:
    try:
        return process.memory_info().rss
    except psutil.Error:
        return 0

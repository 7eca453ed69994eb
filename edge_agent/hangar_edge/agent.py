"""The agent: enrol once, then three loops over one data directory.

* the **poller** (a thread) asks Hangar for the desired state with
  ``If-None-Match`` every ``poll_interval_s`` + up to ``jitter_s`` (both from
  Hangar), fetches and verifies a new bundle and hands it to the supervisor;
  it sends the status report when something changed or every
  ``status_interval``; with no answer it backs off (doubling, capped);
* the **uploader** (a thread) sends the span buffer when Hangar answers;
* the **main loop** supervises the program and writes a heartbeat run record
  every ``record_interval``.

Offline-first: the last verified bundle starts from the data directory on boot
without asking Hangar; spans and run records wait in the buffer. 401 on any
call means the device was revoked: the program is stopped and the agent exits
with status 3. Hangar saying ``run: false`` (quarantine) stops the program and
keeps polling."""
from __future__ import annotations

import logging
import random
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__, desired, enrolment, otlp
from .buffer import DEFAULT_MAX_BYTES, Buffer
from .bundles import Refused, hex_digest
from .client import Client, Offline, ServerError, TooLarge, Unauthorized
from .clock import Clock, SystemClock
from .receiver import Receiver
from .store import Store
from .supervisor import Exit, Supervisor
from .uploader import Uploader

log = logging.getLogger("hangar_edge")
STATE_PATH = "api/v1/edge/state"
STATUS_PATH = "api/v1/edge/status"
EXIT_REVOKED = 3
MAX_REFUSED = 20


@dataclass
class Settings:
    data_dir: Path
    server: str | None = None
    token: str | None = None
    name: str = field(default_factory=socket.gethostname)
    labels: dict[str, str] = field(default_factory=dict)
    clock: Clock = field(default_factory=SystemClock)
    buffer_max_bytes: int = DEFAULT_MAX_BYTES
    otlp_port: int = 0
    status_interval: float = 60.0
    record_interval: float = 900.0
    stable_after: float = 30.0
    backoff_max: float = 300.0  # restarts of the program
    offline_backoff_max: float = 300.0  # polls while Hangar does not answer
    poll_interval: float | None = None  # overrides Hangar's (demos, tests)
    long_poll: float = 0.0
    upload_interval: float = 5.0
    ca_file: str | None = None


class Agent:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.clock = settings.clock
        self.store = Store(settings.data_dir)
        self.buffer = Buffer(self.store.buffer_path, max_bytes=settings.buffer_max_bytes)
        self.state = self.store.state()
        self.stopping = threading.Event()
        self.wake = threading.Event()
        self.exit_code = 0
        self.online = False
        self.revoked = ""
        self.error = ""
        self._status_dirty = True
        self._lock = threading.RLock()
        self.supervisor = Supervisor(self.clock, self.store.logs, on_exit=self._record_exit,
                                     on_change=self._changed, stable_after=settings.stable_after,
                                     backoff_max=settings.backoff_max)
        self.receiver = Receiver(self.buffer, self.clock.now, port=settings.otlp_port,
                                 extra_resource=self._child_resource)
        self.client: Client | None = None
        self.uploader: Uploader | None = None
        self._resource = b""

    def enrol(self) -> dict:
        """The device's identity: from the data directory, or by enrolling."""
        return enrolment.enrol(self.store, self.settings, self.state, self.stopping)

    # Start and stop -------------------------------------------------------------------------

    def start(self) -> None:
        identity = self.enrol()
        server = self.settings.server or identity["server"]
        self.device_id = str(identity["device_id"])
        self._resource = otlp.resource({"service.name": "hangar-edge",
                                        "service.version": __version__,
                                        "hangar.edge.device.id": self.device_id,
                                        "hangar.edge.device.name": identity.get("name", "")})
        self.client = Client(server, token=identity["device_token"],
                             ca_file=self.settings.ca_file)
        self.uploader = Uploader(self.buffer, Client(server, token=identity["device_token"],
                                                     ca_file=self.settings.ca_file),
                                 self.clock, interval=self.settings.upload_interval,
                                 on_unauthorized=self._unauthorized)
        self.receiver.start()
        self._restore()
        self._threads = [threading.Thread(target=self._poll_loop, name="poller", daemon=True),
                         threading.Thread(target=self.uploader.run, name="uploader",
                                          daemon=True)]
        for thread in self._threads:
            thread.start()

    def run(self) -> int:
        """Until ``stop()`` (or a revocation); the process's exit status."""
        self.start()
        next_record = self.clock.now() + self.settings.record_interval
        health = None
        while not self.stopping.is_set():
            self.supervisor.tick()
            if self.supervisor.health() != health:  # e.g. Progressing → Healthy: tell Hangar
                health = self.supervisor.health()
                self._changed()
            if self.clock.now() >= next_record:
                self._record_heartbeat()
                next_record = self.clock.now() + self.settings.record_interval
            self.stopping.wait(0.1)
        self.shutdown()
        return self.exit_code

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()
        if self.uploader is not None:
            self.uploader.stopping.set()
            self.uploader.wake.set()

    def shutdown(self) -> None:
        """Stop the program, then send what the buffer holds if Hangar answers
        (for a few seconds at most: what is left waits for the next start)."""
        self.stop()
        self.supervisor.stop()
        for thread in getattr(self, "_threads", []):
            thread.join(timeout=35)
        self.receiver.stop()
        if self.uploader is not None and self.online and not self.revoked:
            self.uploader.client.timeout = 5.0
            self.uploader.client.close()
            self.uploader.stopping.clear()
            self.uploader.drain(deadline=time.monotonic() + 5.0)
        self.buffer.close()

    # Desired state --------------------------------------------------------------------------

    def _team_keys(self) -> dict[str, str]:
        return self.state.get("team_keys") or {}

    def _restore(self) -> None:
        """Start the last verified bundle from disk (no network needed)."""
        if self.state.get("run") is False:
            return
        bundle = self.state.get("current")
        if not bundle:
            return
        path = desired.bundle_path(self.store, bundle["digest"])
        if not path.exists():
            return
        try:
            target = desired.prepare(self.store, path, bundle, self._team_keys(),
                                     self.receiver.child_env())
        except Refused as exc:
            log.error("the cached bundle no longer verifies: %s", exc)
            self._refuse(bundle, str(exc))
            return
        self.supervisor.set(target)

    def apply(self, answer: dict) -> None:
        """Make what runs match Hangar's answer."""
        with self._lock:
            if answer.get("team_keys") is not None:
                self.state["team_keys"] = enrolment.team_keys(answer["team_keys"])
            for key in ("poll_interval_s", "jitter_s", "run"):
                if key in answer:
                    self.state[key] = answer[key]
            bundle = answer.get("bundle")
            self.state["desired"] = bundle
            self.state["previous_bundle"] = answer.get("previous_bundle")
            if answer.get("run") is False:
                if self.supervisor.target is not None:
                    log.warning("quarantined by Hangar: stopping %s",
                                self.supervisor.target.version)
                self.supervisor.set(None)
            elif bundle is None:
                self.supervisor.set(None)
                self.state["current"] = None
            else:
                self._switch_to(bundle)
            self.store.save_state(self.state)
        self._changed()

    def _switch_to(self, bundle: dict) -> None:
        try:
            digest = hex_digest(bundle.get("digest", ""))
        except Refused as exc:
            return self._refuse(bundle, str(exc))
        target = self.supervisor.target
        if target is not None and target.digest == digest:
            self.state["current"] = bundle  # e.g. re-signed with a new key: keep the newest
            return
        if self._already_refused(bundle):
            return
        try:
            path = desired.download(self.store, self.client, bundle)
            new_target = desired.prepare(self.store, path, bundle, self._team_keys(),
                                         self.receiver.child_env())
        except (Refused, TooLarge) as exc:
            return self._refuse(bundle, str(exc) if isinstance(exc, Refused)
                                else f"tampered: {exc}")
        except (Offline, ServerError) as exc:
            self.error = f"cannot download {bundle.get('version')}: {exc}"
            log.warning("%s", self.error)
            return
        log.info("running %s (sha256:%s)", new_target.version, digest[:12])
        self.supervisor.set(new_target)
        self.state["current"] = bundle
        self.error = ""
        keep = {digest} | ({target.digest} if target else set())
        previous = self.state.get("previous_bundle") or {}
        if previous.get("digest"):
            keep.add(hex_digest(previous["digest"]))
        desired.prune(self.store, keep)

    def _already_refused(self, bundle: dict) -> bool:
        return any(r["digest"] == bundle.get("digest") and r.get("signature") ==
                   bundle.get("signature") and r.get("key_id") == bundle.get("key_id")
                   for r in self.state.get("refused", []))

    def _refuse(self, bundle: dict, reason: str) -> None:
        log.error("refused bundle %s (%s): %s", bundle.get("version"), bundle.get("digest"),
                  reason)
        refused = [r for r in self.state.get("refused", [])
                   if r["digest"] != bundle.get("digest")]
        refused.append({"digest": bundle.get("digest"), "version": bundle.get("version"),
                        "reason": reason, "signature": bundle.get("signature"),
                        "key_id": bundle.get("key_id"), "at": self.clock.now()})
        self.state["refused"] = refused[-MAX_REFUSED:]
        self.error = f"refused {bundle.get('version')}: {reason}"
        self.store.save_state(self.state)
        self._changed()

    # The poller -----------------------------------------------------------------------------

    def _interval(self) -> tuple[float, float]:
        interval = self.settings.poll_interval or float(self.state.get("poll_interval_s") or 30)
        return interval, float(self.state.get("jitter_s") or 0)

    def poll(self) -> bool:
        """One desired-state request; True if the state changed."""
        headers = {}
        if self.state.get("etag"):
            headers["If-None-Match"] = self.state["etag"]
        path = STATE_PATH
        if self.settings.long_poll:
            path += f"?wait={int(self.settings.long_poll)}"
        response = self.client.get_json(path, headers=headers, ok=(200, 304))
        if response.status == 304:
            return False
        self.state["etag"] = response.headers.get("etag")
        self.apply(response.json() or {})
        return True

    def _poll_loop(self) -> None:
        failures = 0
        next_poll = self.clock.now()
        next_status = self.clock.now()
        while not self.stopping.is_set():
            now = self.clock.now()
            if now >= next_poll:
                try:
                    self.poll()
                    if not self.online:
                        log.info("Hangar answers again")
                        self.uploader.wake.set()
                    self.online, failures = True, 0
                    interval, jitter = self._interval()
                    next_poll = self.clock.now() + (
                        0 if self.settings.long_poll else interval + random.uniform(0, jitter))
                except Unauthorized as exc:
                    self._unauthorized(exc)
                    return
                except (Offline, ServerError) as exc:
                    failures += 1
                    if self.online or failures == 1:
                        log.warning("Hangar does not answer (%s); running offline", exc)
                    self.online = False
                    interval, jitter = self._interval()
                    retry = getattr(exc, "retry_after", None) or min(
                        self.settings.offline_backoff_max, interval * 2 ** min(failures - 1, 10))
                    next_poll = self.clock.now() + retry * random.uniform(0.8, 1.0)
            if self.online and (self._status_dirty or self.clock.now() >= next_status):
                try:
                    self.report()
                    next_status = self.clock.now() + self.settings.status_interval
                except Unauthorized as exc:
                    self._unauthorized(exc)
                    return
                except (Offline, ServerError) as exc:
                    log.warning("status report failed: %s", exc)
                    self.online = False
                    next_poll = min(next_poll, self.clock.now() + 1.0)
            wait = min(next_poll, next_status) - self.clock.now()
            if self.clock.wait(self.wake, max(0.0, wait)):
                self.wake.clear()

    def _unauthorized(self, exc: Unauthorized) -> None:
        if self.revoked:
            return
        self.revoked = exc.detail or "401"
        log.error("Hangar answers 401 (%s): this device is revoked or unknown; stopping its "
                  "program. Enrol again with a new token and a fresh data directory.",
                  self.revoked)
        self.supervisor.set(None)
        self.exit_code = EXIT_REVOKED
        self.stop()

    # Status and records ---------------------------------------------------------------------

    def _changed(self) -> None:
        self._status_dirty = True
        self.wake.set()

    def status(self) -> dict:
        target = self.supervisor.target
        quarantined = self.state.get("run") is False
        stats = self.buffer.stats()
        return {
            "phase": "quarantined" if quarantined else self.supervisor.phase(),
            "health": "Suspended" if quarantined else self.supervisor.health(),
            "version": target.version if target else None,
            "digest": f"sha256:{target.digest}" if target else None,
            "usage": self.supervisor.usage.sample(self.supervisor.pid),
            "refused": [{"digest": r["digest"], "reason": r["reason"]}
                        for r in self.state.get("refused", [])],
            "error": self.supervisor.last_error or self.error or None,
            "buffered": stats["buffered"],
            "dropped": stats["dropped"],
        }

    def report(self) -> None:
        self._status_dirty = False
        try:
            self.client.post_json(STATUS_PATH, self.status(), ok=(200, 202, 204))
        except Exception:
            self._status_dirty = True
            raise

    def _child_resource(self) -> bytes:
        target = self.supervisor.target
        attrs = {"hangar.edge.device.id": getattr(self, "device_id", "")}
        if target is not None:
            attrs["hangar.edge.bundle.version"] = target.version
        return otlp.attributes(1, attrs)

    def _record(self, name: str, start: float, end: float, attrs: dict,
                error: str | None = None) -> None:
        span = otlp.span(name=name, start_ns=int(start * 1e9), end_ns=int(end * 1e9),
                         attrs=attrs, error=error)
        self.buffer.add([otlp.Group(self._resource, otlp.scope("hangar_edge", __version__),
                                    [span])], at=self.clock.now())

    def _record_exit(self, record: Exit) -> None:
        self._record("edge.process", record.started_at, record.ended_at, {
            "hangar.edge.bundle.version": record.target.version,
            "hangar.edge.bundle.digest": f"sha256:{record.target.digest}",
            "process.exit.code": record.code, "hangar.edge.restarts": record.restarts,
            "hangar.edge.stopped": record.stopped},
            error=f"exited with code {record.code}: {record.last_line}" if record.crashed
            else None)

    def _record_heartbeat(self) -> None:
        status = self.status()
        now = self.clock.now()
        self._record("edge.heartbeat", now, now, {
            "hangar.edge.phase": status["phase"], "hangar.edge.health": status["health"],
            "hangar.edge.bundle.version": status["version"],
            "hangar.edge.online": self.online,
            "process.cpu.percent": float(status["usage"]["cpu_percent"]),
            "process.memory.bytes": status["usage"]["memory_bytes"],
            "hangar.edge.buffered": status["buffered"],
            "hangar.edge.dropped": status["dropped"]})


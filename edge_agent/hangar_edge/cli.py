"""``hangar-edge``: the command line.

    hangar-edge --server http://127.0.0.1:8000 --token <enrolment token>
    hangar-edge                     # later runs: the data directory remembers
    hangar-edge status              # what this device runs and buffers (local)

Options also come from the environment (``HANGAR_EDGE_SERVER``,
``HANGAR_EDGE_TOKEN``, ``HANGAR_EDGE_DATA_DIR``, ``HANGAR_EDGE_NAME``), so a token
never has to appear in a process listing."""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
from pathlib import Path

from . import __version__
from .agent import Agent, Settings
from .buffer import Buffer
from .clock import OffsetFileClock, SystemClock
from .enrolment import EXIT_ENROLMENT_REFUSED, EnrolmentRefused
from .store import Store

DEFAULT_DATA_DIR = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") \
    / "hangar-edge"


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"a label is key=value, not {text!r}")
    return key, value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hangar-edge", description=__doc__.split("\n")[0])
    p.add_argument("command", nargs="?", default="run", choices=["run", "status"])
    p.add_argument("--version", action="version", version=f"hangar-edge {__version__}")
    p.add_argument("--server", default=os.environ.get("HANGAR_EDGE_SERVER"),
                   help="Hangar's URL (first run; remembered)")
    p.add_argument("--token", default=os.environ.get("HANGAR_EDGE_TOKEN"),
                   help="enrolment token (first run only)")
    p.add_argument("--token-file", help="read the enrolment token from this file")
    p.add_argument("--data-dir", type=Path,
                   default=Path(os.environ.get("HANGAR_EDGE_DATA_DIR") or DEFAULT_DATA_DIR))
    p.add_argument("--name", default=os.environ.get("HANGAR_EDGE_NAME") or socket.gethostname())
    p.add_argument("--label", action="append", type=_label, default=[], metavar="KEY=VALUE")
    p.add_argument("--buffer-max-mb", type=float, default=64.0,
                   help="span buffer cap; the oldest spans are dropped beyond it (counted)")
    p.add_argument("--otlp-port", type=int, default=0,
                   help="port of the loopback OTLP receiver for the program (0: any free one)")
    p.add_argument("--poll-interval", type=float,
                   help="poll this often instead of Hangar's interval (demos, tests)")
    p.add_argument("--long-poll", type=float, default=0.0, metavar="SECONDS",
                   help="hold each desired-state request open up to this long")
    p.add_argument("--status-interval", type=float, default=60.0)
    p.add_argument("--record-interval", type=float, default=900.0,
                   help="seconds between heartbeat run records")
    p.add_argument("--stable-after", type=float, default=30.0,
                   help="seconds up before the program counts as Healthy")
    p.add_argument("--restart-backoff-max", type=float, default=300.0)
    p.add_argument("--offline-backoff-max", type=float, default=300.0)
    p.add_argument("--upload-interval", type=float, default=5.0)
    p.add_argument("--ca-file", help="CA bundle for an https server with a private CA")
    p.add_argument("--clock-file", type=Path,
                   help="testing: add the number of seconds in this file to the clock")
    p.add_argument("--log-level", default=os.environ.get("HANGAR_EDGE_LOG_LEVEL", "INFO"))
    return p


def local_status(data_dir: Path) -> dict:
    store = Store(data_dir)
    identity = store.identity() or {}
    state = store.state()
    buffer = Buffer(store.buffer_path)
    try:
        stats = buffer.stats()
    finally:
        buffer.close()
    current = state.get("current") or {}
    return {"device_id": identity.get("device_id"), "server": identity.get("server"),
            "version": current.get("version"), "digest": current.get("digest"),
            "run": state.get("run", True), "refused": [
                {"digest": r["digest"], "reason": r["reason"]} for r in state.get("refused", [])],
            "buffer": stats}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "status":
        print(json.dumps(local_status(args.data_dir), indent=2))
        return 0
    token = args.token
    if args.token_file:
        token = Path(args.token_file).read_text().strip()
    settings = Settings(
        data_dir=args.data_dir, server=args.server, token=token, name=args.name,
        labels=dict(args.label),
        clock=OffsetFileClock(args.clock_file) if args.clock_file else SystemClock(),
        buffer_max_bytes=int(args.buffer_max_mb * 1024 * 1024), otlp_port=args.otlp_port,
        status_interval=args.status_interval, record_interval=args.record_interval,
        stable_after=args.stable_after, backoff_max=args.restart_backoff_max,
        offline_backoff_max=args.offline_backoff_max, poll_interval=args.poll_interval,
        long_poll=args.long_poll, upload_interval=args.upload_interval, ca_file=args.ca_file)
    agent = Agent(settings)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: agent.stop())
    try:
        return agent.run()
    except EnrolmentRefused as exc:
        logging.getLogger("hangar_edge").error("%s", exc)
        agent.shutdown()
        return EXIT_ENROLMENT_REFUSED

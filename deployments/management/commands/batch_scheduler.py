"""Run the batch scheduler loop (``deployments.batch.loop``) until SIGTERM/SIGINT."""
from __future__ import annotations

import signal
import threading

from django.core.management.base import BaseCommand

from deployments.batch import loop


class Command(BaseCommand):
    help = ("Fire due batch schedules as they come due (and with --supervise, supervise "
            "their jobs); any number may run beside beat.")

    def add_arguments(self, parser):
        parser.add_argument("--supervise", action="store_true",
                            help="also supervise pending and running jobs")
        parser.add_argument("--busy-interval", type=float, default=0.1,
                            help="seconds between supervision passes while jobs run")

    def handle(self, *args, **options):
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        loop.run(stop, supervise=options["supervise"], busy_s=options["busy_interval"])

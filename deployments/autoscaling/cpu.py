"""CPU utilisation: percent of the CPU each replica requested."""
from __future__ import annotations

from typing import ClassVar

from .base import Signal


class CpuSignal(Signal):
    name: ClassVar[str] = "cpu"
    needs_usage: ClassVar[bool] = True

    def value(self, row, deployment) -> float | None:
        if row.cpu_percent is None:
            return None
        return row.cpu_percent / float((row.version or deployment.version).cpu)

"""How busy the machine was while something was measured: other processes' CPU use, CPU steal
(time a virtual machine's host gave to others) and the load average.

On Linux the shares come from ``/proc/stat`` (all CPUs) minus this process's own CPU time;
elsewhere only the load average is known. A measurement counts as taken on a *busy* machine when
others used more than :data:`BUSY_OTHER_CPU_PERCENT` of the CPU time, steal exceeded
:data:`BUSY_STEAL_PERCENT`, or (without ``/proc/stat``) the load average exceeded the CPU count.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

BUSY_OTHER_CPU_PERCENT = 25.0
BUSY_STEAL_PERCENT = 5.0
PROC_STAT = Path("/proc/stat")


def _cpu_jiffies() -> tuple[int, int, int] | None:
    """(total, idle + iowait, steal) jiffies over all CPUs since boot; None without /proc/stat."""
    try:
        fields = PROC_STAT.read_text().splitlines()[0].split()
    except OSError:
        return None
    values = [int(value) for value in fields[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (values + [0] * 8)[:8]
    return user + nice + system + idle + iowait + irq + softirq + steal, idle + iowait, steal


def _own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


@dataclass
class MachineLoad:
    """The machine's load over one interval. Percentages are of all CPUs' time (None where unknown)."""

    load_average: float
    cpu_count: int
    other_cpu_percent: float | None
    steal_percent: float | None

    @property
    def busy(self) -> bool:
        if self.other_cpu_percent is None:
            return self.load_average > self.cpu_count
        return self.other_cpu_percent > BUSY_OTHER_CPU_PERCENT or (self.steal_percent or 0.0) > BUSY_STEAL_PERCENT

    def describe(self) -> str:
        parts = [f"load average {self.load_average:.1f} on {self.cpu_count} CPUs"]
        if self.other_cpu_percent is not None:
            parts.append(f"other processes {self.other_cpu_percent:.0f}% of the CPU time")
        if self.steal_percent is not None:
            parts.append(f"CPU steal {self.steal_percent:.0f}%")
        return ", ".join(parts)

    def to_dict(self) -> dict:
        return {
            "load_average": round(self.load_average, 2),
            "cpu_count": self.cpu_count,
            "other_cpu_percent": None if self.other_cpu_percent is None else round(self.other_cpu_percent, 1),
            "steal_percent": None if self.steal_percent is None else round(self.steal_percent, 1),
            "busy": self.busy,
        }


class LoadMeter:
    """Measures :class:`MachineLoad` between :meth:`start` (or construction) and :meth:`stop`."""

    def __init__(self) -> None:
        self.start()

    def start(self) -> None:
        self._jiffies = _cpu_jiffies()
        self._own = _own_cpu_seconds()
        self._wall = time.monotonic()

    def stop(self) -> MachineLoad:
        cpu_count = os.cpu_count() or 1
        load_average = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        end = _cpu_jiffies()
        if self._jiffies is None or end is None or end[0] <= self._jiffies[0]:
            return MachineLoad(load_average, cpu_count, None, None)
        total, idle, steal = (after - before for after, before in zip(end, self._jiffies))
        ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        own = (_own_cpu_seconds() - self._own) * ticks
        other = max(0.0, total - idle - steal - own)
        return MachineLoad(load_average, cpu_count, 100 * other / total, 100 * steal / total)

"""The machine a benchmark runs on: what it is, and how busy other processes kept it.

Both benchmarks run on shared machines, where a neighbour's job slows the
figures down; so each reports how much of the machine other processes used
while it measured, read from ``/proc/stat`` the same way for both.
"""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path


def busy_cpu_seconds() -> float | None:
    """Busy CPU seconds of the whole machine so far, all cores, from ``/proc/stat`` (``None`` where there is none).

    Busy is user + nice + system + irq + softirq; idle, iowait and steal (time
    the hypervisor gave to other machines) are not.
    """
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq = (int(value) for value in fields[:7])
    except (OSError, IndexError, ValueError):
        return None
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def other_processes_share(busy_seconds: float | None, own_cpu_seconds: float, wall_seconds: float) -> float | None:
    """Share of the whole machine (0-1) that other processes used over ``wall_seconds``.

    ``busy_seconds`` is the change of :func:`busy_cpu_seconds` over that time,
    ``own_cpu_seconds`` this process's CPU time (``time.process_time()``) over
    it.  Timings taken while the share is high are noisy.
    """
    if busy_seconds is None or wall_seconds <= 0:
        return None
    others = (busy_seconds - own_cpu_seconds) / (wall_seconds * (os.cpu_count() or 1))
    return min(1.0, max(0.0, others))


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what :mod:`platform` knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()

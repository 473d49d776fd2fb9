"""What a process costs, read from /proc: CPU time, context switches, RSS/PSS/USS.

Shared by bench/idle.py and bench/density.py. :func:`sample` reads one process (all its
threads) at one instant; :func:`cost` turns two samples into rates over the window.
CPU time is each thread's ``/proc/PID/task/TID/schedstat`` run time (nanoseconds, not
the 10 ms ticks of ``/proc/PID/stat``), wakeups are its voluntary + involuntary context
switches, memory is ``/proc/PID/smaps_rollup`` (RSS, PSS, and USS = private clean +
private dirty). A thread that ends inside the window takes its counts with it; the
launcher keeps its worker threads, so an idle window has none ending.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

__all__ = ["Sample", "Cost", "sample", "cost", "memory", "KIB", "MIB"]

KIB = 1024
MIB = 1 << 20


@dataclass(frozen=True, slots=True)
class Sample:
    at: float  # time.monotonic()
    cpu_ns: int
    switches: int


@dataclass(frozen=True, slots=True)
class Cost:
    seconds: float
    cpu_ms_per_s: float
    wakeups_per_s: float
    rss: int  # bytes, at the end of the window
    pss: int
    uss: int


def sample(pid: int) -> Sample:
    """CPU nanoseconds and context switches of every live thread of ``pid``, now."""
    cpu = switches = 0
    tasks = f"/proc/{pid}/task"
    for tid in os.listdir(tasks):
        try:
            with open(f"{tasks}/{tid}/schedstat") as f:
                cpu += int(f.read().split()[0])
            with open(f"{tasks}/{tid}/status") as f:
                for line in f:
                    if "ctxt_switches:" in line:  # voluntary_ and nonvoluntary_
                        switches += int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError):
            continue  # the thread ended between listdir and open
    return Sample(time.monotonic(), cpu, switches)


def memory(pid: int) -> tuple[int, int, int]:
    """(RSS, PSS, USS) in bytes from ``/proc/PID/smaps_rollup``."""
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            parts = rest.split()
            if len(parts) == 2 and parts[1] == "kB":
                fields[key] = int(parts[0]) * KIB
    uss = fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)
    return fields.get("Rss", 0), fields.get("Pss", 0), uss


def cost(pid: int, before: Sample, after: Sample | None = None) -> Cost:
    """The rates between ``before`` and ``after`` (default: now) and memory now."""
    after = after or sample(pid)
    seconds = after.at - before.at
    rss, pss, uss = memory(pid)
    return Cost(
        seconds=seconds,
        cpu_ms_per_s=(after.cpu_ns - before.cpu_ns) / 1e6 / seconds,
        wakeups_per_s=(after.switches - before.switches) / seconds,
        rss=rss,
        pss=pss,
        uss=uss,
    )

"""CPU time, RSS and start time of a process from ``/proc``: what ``/status`` shows of the
launcher and its VMM.

Called by :class:`launcher.status.collect.Collector` (in a worker thread). Three numbers
per process do not need psutil: measured on the dev VM, ``import psutil`` added
0.7-0.9 MiB to the launcher's RSS (issue 17: ≤ 40 MiB with the status endpoint used),
and a read here is two small files. :class:`ProcessGone` when the process has exited.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["ProcStat", "ProcessGone", "read"]

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


class ProcessGone(OSError):
    """The process does not exist (any more)."""


@dataclass(frozen=True, slots=True)
class ProcStat:
    """One process's CPU seconds (user + system), resident bytes and start (epoch s)."""

    cpu_s: float
    rss_bytes: int
    started_at: float


def _boot_time() -> float:
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("btime "):
                return float(line.split()[1])
    raise OSError("no btime in /proc/stat")


def read(pid: int) -> ProcStat:
    """``pid``'s numbers from ``/proc/PID/stat`` and ``/proc/PID/statm``."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        with open(f"/proc/{pid}/statm", "rb") as f:
            statm = f.read()
    except (FileNotFoundError, ProcessLookupError) as err:
        raise ProcessGone(f"process {pid} is gone") from err
    # the command name (field 2) may hold spaces and parentheses: split after its last ")"
    fields = stat[stat.rindex(b")") + 2 :].split()
    utime, stime, start = int(fields[11]), int(fields[12]), int(fields[19])
    return ProcStat(
        cpu_s=(utime + stime) / _TICKS,
        rss_bytes=int(statm.split()[1]) * _PAGE,
        started_at=_boot_time() + start / _TICKS,
    )

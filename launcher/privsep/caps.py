"""Linux capabilities of this process: read, limit, drop; and the two ``prctl`` knobs
privilege separation needs (no-new-privs, parent-death signal).

Called by :mod:`launcher.privsep.helper` (the helper keeps only the capabilities it
needs; it dies with the launcher), by the composition root (``launcher.run``: the
launcher drops every capability once the VMM runs and every socket is open) and by the
status endpoint (each process's user and capabilities, read from ``/proc/PID/status``).

Why ctypes on libc's ``capget``/``capset``/``prctl``: the standard library has neither
call; ``python-prctl`` (last release 2020, a C extension built against libcap-dev) and
``pyprctl`` (2021) are not kept up, and the two calls with their one struct are a few
lines. Capabilities are per *thread* in Linux: :func:`drop_all` changes the calling
thread only, so the caller makes sure no other thread that holds them is left
(:func:`threads_with_caps` checks).
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from launcher.errors import LauncherError

__all__ = [
    "CAP",
    "ProcCaps",
    "current",
    "limit_to",
    "drop_all",
    "set_no_new_privs",
    "set_parent_death_signal",
    "read_proc",
    "threads_with_caps",
    "names",
]

#: Capability numbers (linux/capability.h) of the ones this project talks about.
CAP = {
    "CHOWN": 0,
    "DAC_OVERRIDE": 1,
    "FOWNER": 3,
    "KILL": 5,
    "SETGID": 6,
    "SETUID": 7,
    "SETPCAP": 8,
    "NET_BIND_SERVICE": 10,
    "NET_ADMIN": 12,
    "NET_RAW": 13,
    "IPC_LOCK": 14,
    "SYS_ADMIN": 21,
    "SYS_RESOURCE": 24,
}
_NAMES = {v: k for k, v in CAP.items()}

_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_PR_SET_PDEATHSIG = 1
_PR_SET_NO_NEW_PRIVS = 38


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


# The symbols of the libc this interpreter runs on (no ctypes.util: it runs ldconfig).
_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise LauncherError(f"{what} failed: {os.strerror(errno)}")


@dataclass(frozen=True, slots=True)
class ProcCaps:
    """Capability masks (bit N = capability N) of one thread or process."""

    effective: int
    permitted: int
    inheritable: int = 0

    @property
    def empty(self) -> bool:
        """No effective and no permitted capability."""
        return self.effective == 0 and self.permitted == 0


def current() -> ProcCaps:
    """The calling thread's capabilities (``capget``)."""
    header = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_Data * 2)()
    _check(_libc.capget(ctypes.byref(header), data), "capget")
    return ProcCaps(
        effective=data[0].effective | data[1].effective << 32,
        permitted=data[0].permitted | data[1].permitted << 32,
        inheritable=data[0].inheritable | data[1].inheritable << 32,
    )


def _set(caps: ProcCaps) -> None:
    header = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_Data * 2)()
    for i in (0, 1):
        data[i].effective = (caps.effective >> (32 * i)) & 0xFFFFFFFF
        data[i].permitted = (caps.permitted >> (32 * i)) & 0xFFFFFFFF
        data[i].inheritable = (caps.inheritable >> (32 * i)) & 0xFFFFFFFF
    _check(_libc.capset(ctypes.byref(header), data), "capset")


def mask(cap_names: Iterable[str]) -> int:
    """The bit mask of capability names (``NET_ADMIN``, …)."""
    bits = 0
    for name in cap_names:
        bits |= 1 << CAP[name]
    return bits


def limit_to(cap_names: Iterable[str]) -> ProcCaps:
    """Keep only ``cap_names`` (of those this thread has) in the effective and permitted
    sets; the inheritable set is cleared. Returns what is left."""
    now = current()
    keep = mask(cap_names) & now.permitted
    _set(ProcCaps(effective=keep, permitted=keep, inheritable=0))
    return current()


def drop_all() -> None:
    """No effective, permitted or inheritable capability left in the calling thread
    (the ambient set empties with the permitted one); raises if any is left."""
    _set(ProcCaps(0, 0, 0))
    if not current().empty:
        raise LauncherError("capabilities are still held after capset")


def set_no_new_privs() -> None:
    """``PR_SET_NO_NEW_PRIVS``: a program this process executes never gains privileges
    (a root user's exec gets no capabilities it does not already hold). No capability
    is needed; it cannot be undone."""
    _check(_libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")


def set_parent_death_signal(signum: int) -> None:
    """``PR_SET_PDEATHSIG``: this process gets ``signum`` when the thread that made it
    exits (the caller then checks ``getppid()`` for a parent already gone)."""
    _check(_libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")


def names(bits: int) -> list[str]:
    """Capability names in ``bits`` (``cap_N`` for one this module does not name)."""
    return [_NAMES.get(n, f"cap_{n}") for n in range(64) if bits >> n & 1]


def _parse_status(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


@dataclass(frozen=True, slots=True)
class ProcInfo:
    """A process's users and capabilities as ``/proc/PID/status`` shows them."""

    pid: int
    uid: int  # the effective uid
    gid: int
    caps: ProcCaps


def read_proc(pid: int | str = "self", proc: Path = Path("/proc")) -> ProcInfo:
    """Users and capabilities of ``pid`` (``OSError`` if it is gone)."""
    fields = _parse_status((proc / str(pid) / "status").read_text())
    return ProcInfo(
        pid=int(fields["Pid"]),
        uid=int(fields["Uid"].split()[1]),
        gid=int(fields["Gid"].split()[1]),
        caps=ProcCaps(
            effective=int(fields["CapEff"], 16),
            permitted=int(fields["CapPrm"], 16),
            inheritable=int(fields["CapInh"], 16),
        ),
    )


def threads_with_caps(pid: int | str = "self", proc: Path = Path("/proc")) -> list[int]:
    """The threads of ``pid`` that still hold an effective or permitted capability."""
    left = []
    for task in sorted((proc / str(pid) / "task").iterdir()):
        try:
            info = read_proc(task.name, proc)
        except (OSError, KeyError, ValueError):
            continue  # the thread ended meanwhile
        if not info.caps.empty:
            left.append(info.pid)
    return left

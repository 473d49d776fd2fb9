"""Read and write per-netns sysctls (/proc/sys/net/…), the only sysctls the launcher sets.

Called by ``apply`` with the plan's :class:`Sysctl` items. Forwarding, arp_ignore and
accept_dad are per network namespace, so setting them in the pod netns never touches
the node. Writes are skipped when the value is already right (applying twice changes
nothing).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from launcher.errors import NetworkError

from .netlink import run_in_netns

__all__ = ["Sysctl", "apply_sysctls", "read_sysctl"]

log = logging.getLogger(__name__)
PROC_SYS = Path("/proc/sys")


@dataclass(frozen=True, slots=True)
class Sysctl:
    """One sysctl, ``key`` in dotted form (``net.ipv4.ip_forward``) and its wanted value."""

    key: str
    value: str

    @property
    def path(self) -> Path:
        """The /proc/sys file; an interface name in ``net.*.conf.<if>.<knob>`` may hold dots."""
        parts = self.key.split(".")
        if len(parts) > 5 and parts[0] == "net" and parts[2] in ("conf", "neigh"):
            parts = [*parts[:3], ".".join(parts[3:-1]), parts[-1]]
        return PROC_SYS.joinpath(*parts)


def read_sysctl(key: str, netns: str | None = None) -> str:
    """The current value of ``key`` in ``netns``."""
    path = Sysctl(key, "").path

    def read() -> str:
        try:
            return path.read_text().strip()
        except OSError as err:
            raise NetworkError(f"cannot read sysctl {key}: {err}") from err

    return run_in_netns(netns, read)


def apply_sysctls(items: Iterable[Sysctl], netns: str | None = None) -> int:
    """Write every sysctl whose value differs; returns how many were written."""
    wanted = list(items)

    def write() -> int:
        changed = 0
        for item in wanted:
            try:
                if item.path.read_text().strip() == item.value:
                    continue
                item.path.write_text(item.value + "\n")
            except OSError as err:
                raise NetworkError(f"cannot set sysctl {item.key}={item.value}: {err}") from err
            log.debug("--> sysctl %s=%s", item.key, item.value)
            changed += 1
        return changed

    return run_in_netns(netns, write)

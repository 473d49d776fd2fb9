"""Pod-level sysctls: check them first, write them only where /proc/sys is writable.

Called by ``apply`` with ``NetworkPlan.sysctls`` before anything in the pod is touched,
and by its rollback (:func:`restore_sysctls`). The contract (docstring of
``launcher.network.plan``): the plan lists exactly the namespaced ``net.*`` sysctls that
must be set at pod level; per-interface settings go through netlink, not here.

Every CRI runtime mounts ``/proc/sys`` read-only in an unprivileged container, so the
launcher cannot set these itself there: the Pod declares them in
``spec.securityContext.sysctls`` and the runtime sets them in the pod's network namespace
before the launcher starts. :func:`ensure_sysctls` reads each one; a right value needs
nothing; a wrong one is written only where ``/proc/sys`` is writable (host root, the
tests: behaving as before); otherwise it raises one NetworkError line naming the sysctl,
the value needed and the Pod field, having changed nothing. ``apply`` uses the two halves
(:func:`pending_sysctls` in its preflight, :func:`write_sysctls` as its first change) so
the previous values are in its transaction record before anything is written.

``net.*`` sysctls are per network namespace (checked on Linux 6.18: ``net.ipv4.ip_forward``,
``net.ipv4.conf.all.*``, ``net.ipv6.conf.all.*`` set in one netns are not seen in
another), so setting them in the pod never touches the node.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from launcher.errors import NetworkError

from .netlink import run_in_netns

__all__ = [
    "POD_SYSCTLS_FIELD",
    "Sysctl",
    "ensure_sysctls",
    "pending_sysctls",
    "read_sysctl",
    "restore_sysctls",
    "write_sysctls",
]

log = logging.getLogger(__name__)
PROC_SYS = Path("/proc/sys")
#: Where a Pod declares the sysctls its runtime sets (Kubernetes PodSecurityContext).
POD_SYSCTLS_FIELD = "spec.securityContext.sysctls"


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


def _read(item: Sysctl) -> str:
    try:
        return item.path.read_text().strip()
    except OSError as err:
        raise NetworkError(f"cannot read sysctl {item.key}: {err.strerror or err}") from err


def read_sysctl(key: str, netns: str | None = None) -> str:
    """The current value of ``key`` in ``netns``."""
    return run_in_netns(netns, lambda: _read(Sysctl(key, "")))


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return True


def _unset(missing: list[tuple[Sysctl, str]], why: str) -> NetworkError:
    if len(missing) == 1:
        item, now = missing[0]
        what = f"pod-level sysctl {item.key} must be {item.value} (it is {now})"
        them = "it"
    else:
        listed = ", ".join(f"{item.key}={item.value} (it is {now})" for item, now in missing)
        what = f"pod-level sysctls {listed} are not set"
        them = "them"
    return NetworkError(f"{what} and {why}: set {them} in the Pod's {POD_SYSCTLS_FIELD}")


def pending_sysctls(
    items: Iterable[Sysctl], netns: str | None = None
) -> tuple[tuple[Sysctl, str], ...]:
    """The pod-level sysctls that do not have their value yet, each with its current
    value; NetworkError when one of them cannot be written here (``/proc/sys`` read-only):
    one line naming each such sysctl, its needed value and ``spec.securityContext.sysctls``.
    Reads only."""
    wanted = list(items)
    for item in wanted:
        if not item.key.startswith("net."):
            raise NetworkError(f"sysctl {item.key} is not a namespaced net.* sysctl")

    def work() -> tuple[tuple[Sysctl, str], ...]:
        missing = [(item, now) for item in wanted if (now := _read(item)) != item.value]
        if any(_read_only(item.path) for item, _ in missing):
            raise _unset(missing, "/proc/sys is read-only in this container")
        return tuple(missing)

    return run_in_netns(netns, work)


def write_sysctls(pending: Iterable[tuple[Sysctl, str]], netns: str | None = None) -> int:
    """Write what :func:`pending_sysctls` returned (all or, on a refused write, none:
    the ones written are set back); returns how many were written."""
    items = list(pending)

    def work() -> int:
        written: list[tuple[Sysctl, str]] = []
        for item, now in items:
            try:
                item.path.write_text(item.value + "\n")
            except OSError as err:
                _write_back(written)
                raise _unset(
                    items, f"the launcher may not write it ({err.strerror or err})"
                ) from err
            log.debug("--> sysctl %s=%s (was %s)", item.key, item.value, now)
            written.append((item, now))
        return len(written)

    return run_in_netns(netns, work) if items else 0


def ensure_sysctls(
    items: Iterable[Sysctl], netns: str | None = None
) -> tuple[tuple[Sysctl, str], ...]:
    """:func:`pending_sysctls` then :func:`write_sysctls`: every pod-level sysctl has its
    value afterwards; returns (sysctl, previous value) for each one written."""
    pending = pending_sysctls(items, netns)
    write_sysctls(pending, netns)
    return pending


def _write_back(written: list[tuple[Sysctl, str]] | tuple[tuple[Sysctl, str], ...]) -> None:
    for item, old in reversed(written):
        try:
            item.path.write_text(old + "\n")
        except OSError as err:
            log.warning("could not set sysctl %s back to %s: %s", item.key, old, err)


def restore_sysctls(previous: Iterable[tuple[Sysctl, str]], netns: str | None = None) -> None:
    """Write back the values :func:`ensure_sysctls` replaced (a rollback; best effort,
    a failure is a warning: the pod's addresses and links matter, these are harmless)."""
    items = list(previous)
    if items:
        run_in_netns(netns, lambda: _write_back(items))

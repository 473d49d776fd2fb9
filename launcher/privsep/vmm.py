"""What the VMM's non-root user needs: ``--vmm-user`` parsed, its files handed over.

Called by the composition root (``launcher.run``) once the machine is composed and
before the VMM is spawned (with the launcher's start-up capabilities still held). The
VMM runs as uid/gid 107 by default (KubeVirt's ``qemu`` user); ``--vmm-user keep``
keeps today's behaviour (the VMM runs as the launcher's user).

Least privilege: only what the VMM writes is given to it — the disks it may write (their
owner becomes the VMM user). Its QMP or API socket is made by the launcher, listening, in
the launcher's own run directory (mode 0700) and passed in as an fd (QEMU ``-chardev
socket,fd=N``, cloud-hypervisor ``--api-socket fd=N``), so the VMM needs no access to
that directory and the launcher, holding no capability later, can still reach the
socket (a root process without CAP_DAC_OVERRIDE could not connect to a socket the VMM
user made in a directory of its own). What it only reads (kernel, initrd, firmware,
read-only disks) must already be readable by it: a path it cannot reach is refused
with a HypervisorError naming the path, never made readable by changing its mode or its
parents'. Taps reach the VMM as file descriptors (``launcher.run``), so it needs no
capability at all.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hypervisor.base import RunAs
from hypervisor.errors import HypervisorError
from hypervisor.machine import MachineConfig
from launcher.errors import UsageError

__all__ = [
    "VmmUser",
    "DEFAULT_VMM_USER",
    "KEEP",
    "parse_user",
    "hand_over",
    "kill",
    "set_signaller",
]

#: ``--vmm-user`` when not given: KubeVirt's qemu user and group.
DEFAULT_VMM_USER = "107:107"
#: ``--vmm-user keep``: the VMM runs as the launcher's user (tests with host paths).
KEEP = "keep"


@dataclass(frozen=True, slots=True)
class VmmUser:
    """The numeric user and group the VMM runs as."""

    uid: int
    gid: int

    def __str__(self) -> str:
        return f"{self.uid}:{self.gid}"


def parse_user(text: str) -> VmmUser | None:
    """``UID[:GID]`` (numbers; GID defaults to UID) or ``keep`` (None); UsageError else."""
    if text == KEEP:
        return None
    uid_text, colon, gid_text = text.partition(":")
    try:
        uid = int(uid_text)
        gid = int(gid_text) if colon else uid
    except ValueError:
        raise UsageError(f"--vmm-user {text!r} is not UID[:GID] or {KEEP!r}") from None
    if not (0 <= uid < 2**32 - 1 and 0 <= gid < 2**32 - 1):
        raise UsageError(f"--vmm-user {text!r} is out of range")
    return VmmUser(uid, gid)


#: Set by the composition root: how to signal the VMM when this process may not.
_signaller: Callable[[int, int], None] | None = None


def set_signaller(signaller: Callable[[int, int], None]) -> None:
    """From now on :func:`kill` falls back to ``signaller(pid, signum)`` (the helper)."""
    global _signaller  # noqa: PLW0603 - one run per process
    _signaller = signaller


def kill(pid: int, signum: int) -> None:
    """``os.kill``, or through the run's signaller when this process may not signal the
    VMM (it runs as another user and this process has no CAP_KILL). Called by the
    supervisor (SIGKILL after a failed stop) and the liveness check (SIGCONT)."""
    try:
        os.kill(pid, signum)
    except PermissionError:
        if _signaller is None:
            raise
        _signaller(pid, signum)


def _can(user: VmmUser, st: os.stat_result, bits: int) -> bool:
    """Whether ``user`` (no supplementary groups, no capability) has ``bits`` (r=4,w=2,x=1)."""
    if user.uid == 0:
        return True
    if st.st_uid == user.uid:
        return st.st_mode >> 6 & bits == bits
    if st.st_gid == user.gid:
        return st.st_mode >> 3 & bits == bits
    return st.st_mode & bits == bits


def _require_reachable(user: VmmUser, path: Path, bits: int, what: str) -> None:
    """Every parent directory searchable by ``user`` (along the path as written and as
    its symlinks resolve) and ``path`` allowing ``bits``."""
    absolute = Path(os.path.abspath(path))
    resolved = Path(os.path.realpath(path))
    for parent in (*reversed(absolute.parents), *reversed(resolved.parents)):
        try:
            st = parent.stat()
        except OSError as err:
            raise HypervisorError(f"{what} {path}: {err.strerror}") from err
        if not _can(user, st, 1):
            raise HypervisorError(
                f"the VMM user {user} cannot reach {what} {path}: "
                f"directory {parent} is not searchable by it"
            )
    try:
        st = absolute.stat()
    except OSError as err:
        raise HypervisorError(f"{what} {path}: {err.strerror}") from err
    if not _can(user, st, bits):
        verb = "write" if bits & 2 else "read" if bits & 4 else "search"
        raise HypervisorError(f"the VMM user {user} cannot {verb} {what} {path}")


def _chown(user: VmmUser, path: Path, what: str) -> None:
    try:
        os.chown(path, user.uid, user.gid)
    except OSError as err:
        raise HypervisorError(f"cannot give {what} {path} to the VMM user {user}: {err}") from err


def hand_over(user: VmmUser, config: MachineConfig, run_dir: Path, *, kvm: bool = False) -> RunAs:
    """Create ``run_dir`` (mode 0700, this process's), make the writable disks ``user``'s;
    check that it can read the rest. HypervisorError names the first path it cannot use;
    everything is checked before anything changes owner. The writable disks that are
    regular files are the only thing chowned (none: no chown at all, so a launcher
    without CAP_CHOWN runs a VM without them); :func:`launcher.privileges.handed_over_disks`
    names the same disks, which is why the launcher asks for CHOWN.
    Returns how to spawn the VMM: ``user`` with no supplementary group but /dev/kvm's
    (``kvm``: only what KVM needs; never the launcher's groups)."""
    given: list[tuple[Path, str]] = []
    for disk in config.disks:
        path = Path(disk.path)
        if not disk.read_only and path.is_file():
            # It becomes the user's: its directories must be searchable, its mode rw for
            # the owner; what other users may do with it does not matter.
            _require_reachable(user, path.parent, 1, f"the directory of disk {disk.id}")
            if path.stat().st_mode & 0o600 != 0o600:
                raise HypervisorError(
                    f"disk {disk.id} {path} is not readable and writable by its owner"
                )
            given.append((path, f"disk {disk.id}"))
        else:
            _require_reachable(user, path, 4 if disk.read_only else 6, f"disk {disk.id}")
        if disk.backing is not None:  # a containerDisk's overlay: the image is only read
            _require_reachable(user, Path(disk.backing), 4, f"the image behind disk {disk.id}")
    if config.kernel is not None:
        _require_reachable(user, Path(config.kernel.kernel), 4, "the kernel")
        if config.kernel.initrd:
            _require_reachable(user, Path(config.kernel.initrd), 4, "the initrd")
    if config.firmware:
        _require_reachable(user, Path(config.firmware), 4, "the firmware")
    run_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(run_dir, stat.S_IRWXU)
    for path, what in given:
        _chown(user, path, what)
    groups: tuple[int, ...] = ()
    if kvm and os.path.exists("/dev/kvm"):
        groups = (os.stat("/dev/kvm").st_gid,)
    return RunAs(user.uid, user.gid, groups)

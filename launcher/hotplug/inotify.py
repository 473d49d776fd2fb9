"""Linux inotify on directories, for the event loop: the hot-plug watcher's wake-up source.

Called by :class:`launcher.hotplug.watch.Watcher` only. :class:`DirWatch` holds one
non-blocking inotify descriptor (``inotify_init1``) with a watch on each directory it is
given; the watcher registers the descriptor with ``loop.add_reader`` and sleeps until the
kernel reports an entry of one of those directories created, renamed, written, removed
or changed — kubelet's ``..data`` symlink rename shows as ``IN_MOVED_TO`` in the volume
directory. The events' contents are not parsed: any event means "check the files again",
which the watcher does by comparing signatures, so a lost or merged event costs nothing.

The three libc calls go through :mod:`ctypes` on the process's own libc
(``CDLL(None)``: no ``ctypes.util.find_library``, which runs ``ldconfig`` in a child).
A library was weighed: inotify_simple is the same ~40 lines of ctypes and asyncinotify
adds its own task machinery; neither buys anything here, and no dependency is added.
:class:`InotifyUnavailable` is raised when the kernel or the limits refuse
(``ENOSYS``, ``EMFILE``, ``ENOSPC`` from ``max_user_watches``…): the watcher then falls
back to a bounded poll and logs why.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterable
from pathlib import Path

__all__ = ["DirWatch", "InotifyUnavailable", "MASK"]

_IN_MODIFY = 0x002
_IN_ATTRIB = 0x004
_IN_CLOSE_WRITE = 0x008
_IN_MOVED_FROM = 0x040
_IN_MOVED_TO = 0x080
_IN_CREATE = 0x100
_IN_DELETE = 0x200
_IN_DELETE_SELF = 0x400
_IN_MOVE_SELF = 0x800
_IN_ONLYDIR = 0x01000000
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC

#: What a watched directory reports: every way an entry (or the directory) can change.
MASK = (
    _IN_MODIFY | _IN_ATTRIB | _IN_CLOSE_WRITE | _IN_MOVED_FROM | _IN_MOVED_TO | _IN_CREATE
    | _IN_DELETE | _IN_DELETE_SELF | _IN_MOVE_SELF | _IN_ONLYDIR
)  # fmt: skip

_READ_SIZE = 64 * 1024  # many events per read; the bytes are only drained


class InotifyUnavailable(OSError):
    """inotify cannot be used here (no syscall, no libc symbol, or a limit reached)."""


def _libc() -> ctypes.CDLL:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        for name in ("inotify_init1", "inotify_add_watch", "inotify_rm_watch"):
            getattr(libc, name)
    except (OSError, AttributeError) as err:
        raise InotifyUnavailable(errno.ENOSYS, f"libc has no inotify: {err}") from err
    libc.inotify_add_watch.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32)
    return libc


class DirWatch:
    """One inotify descriptor watching a set of directories (replaced with :meth:`watch`)."""

    def __init__(self) -> None:
        self._libc = _libc()
        fd = self._libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            code = ctypes.get_errno()
            raise InotifyUnavailable(code, f"inotify_init1: {os.strerror(code)}")
        self.fd: int = fd
        self._watches: dict[Path, int] = {}

    def watch(self, directories: Iterable[Path]) -> None:
        """Watch exactly ``directories`` (existing ones; a missing one is skipped).

        InotifyUnavailable when the kernel refuses a watch for a reason other than the
        directory being gone (the watch limit, most often)."""
        wanted = set(directories)
        for path in list(self._watches):
            if path not in wanted:
                self._libc.inotify_rm_watch(self.fd, self._watches.pop(path))  # may be gone
        for path in wanted:  # re-adding a watched directory returns its watch again
            wd = self._libc.inotify_add_watch(self.fd, os.fsencode(path), MASK)
            if wd >= 0:
                self._watches[path] = wd
                continue
            self._watches.pop(path, None)
            code = ctypes.get_errno()
            if code in (errno.ENOENT, errno.ENOTDIR, errno.EACCES):
                continue  # gone or not a directory: its parent's watch covers it
            raise InotifyUnavailable(code, f"inotify_add_watch {path}: {os.strerror(code)}")

    @property
    def watched(self) -> frozenset[Path]:
        """The directories watched now."""
        return frozenset(self._watches)

    def drain(self) -> bool:
        """Read every pending event (their bytes are not needed); True if there were any."""
        got = False
        while True:
            try:
                data = os.read(self.fd, _READ_SIZE)
            except BlockingIOError:
                return got
            if not data:
                return got
            got = True

    def close(self) -> None:
        """Close the descriptor (the kernel drops its watches)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            self._watches.clear()

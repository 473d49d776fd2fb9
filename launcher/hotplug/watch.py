"""Notice changes to the mounted spec and downward-API files, the way kubelet makes them.

kubelet's atomic writer never edits a projected file in place: it writes a new
timestamped directory, then renames a ``..data`` symlink onto it, so ``spec.yaml`` (a
symlink to ``..data/spec.yaml``) resolves to a new inode. :class:`Watcher` sleeps until
inotify (:mod:`launcher.hotplug.inotify`) reports a change in a watched file's directory
or in the directory the file resolves to (``IN_MOVED_TO`` of the ``..data`` rename, a
plain rewrite, a removal), then compares a cheap signature of each file's directory (its
own mtime, the ``..data`` target) and of the file as resolved (device, inode, size,
mtime); when it changed it waits until it has been stable for ``debounce_s`` (bounded
number of rounds), re-reads the whole files and yields a :class:`Snapshot` if their bytes
differ from the last one. While nothing changes the watcher arms no timer: an idle
launcher is not woken by it (issue 17). Where inotify cannot be had (no syscall, the
``max_user_watches`` / ``max_user_instances`` limits reached) it logs a warning once and
polls the signature every ``interval_s`` instead — one second is well inside the tens of
seconds kubelet takes to propagate an update.

Called by the hot-plug manager (``launcher.hotplug.manager``).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .inotify import DirWatch, InotifyUnavailable

__all__ = ["Snapshot", "Watcher", "MAX_FILE_BYTES", "DATA_LINK"]

log = logging.getLogger(__name__)

DATA_LINK = "..data"
MAX_FILE_BYTES = 4 << 20  # a VM manifest or annotations file is far smaller
MAX_DEBOUNCE_ROUNDS = 20

_Signature = tuple[object, ...]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The whole bytes of every watched file (None: missing or unreadable), in order."""

    files: tuple[tuple[Path, bytes | None], ...]

    def content(self, path: Path) -> bytes | None:
        """The bytes read for ``path`` (one of the watched paths)."""
        for p, data in self.files:
            if p == path:
                return data
        raise KeyError(path)


def _stat(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _readlink(path: Path) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def _read(path: Path) -> bytes | None:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError:
        return None
    if len(data) > MAX_FILE_BYTES:
        log.warning("%s is larger than %d bytes; ignored", path, MAX_FILE_BYTES)
        return None
    return data


def _watch_dir(path: Path) -> Path:
    """The nearest existing directory at or above ``path`` (a missing one is created there)."""
    while not path.is_dir() and path.parent != path:
        path = path.parent
    return path


class Watcher:
    """Watch ``files`` (and their directories) and yield each settled change of their bytes.

    ``interval_s`` is the poll interval used only where inotify cannot be had;
    ``use_inotify=False`` forces that fallback (tests).
    """

    def __init__(
        self,
        files: Sequence[Path],
        *,
        interval_s: float = 1.0,
        debounce_s: float = 0.3,
        use_inotify: bool = True,
    ) -> None:
        if not files:
            raise ValueError("a Watcher needs at least one file to watch")
        if not 0 < interval_s <= 60 or not 0 <= debounce_s <= 60:
            raise ValueError(f"interval {interval_s!r}s / debounce {debounce_s!r}s out of range")
        self.files = tuple(files)
        self.interval_s = interval_s
        self.debounce_s = debounce_s
        self.use_inotify = use_inotify
        self._last: Snapshot | None = None
        self._sig: _Signature | None = None

    def directories(self) -> set[Path]:
        """What inotify watches: each file's directory and the directory it resolves to."""
        dirs: set[Path] = set()
        for path in self.files:
            dirs.add(_watch_dir(path.parent))
            dirs.add(_watch_dir(Path(os.path.realpath(path)).parent))
        return dirs

    @property
    def has_baseline(self) -> bool:
        """True once :meth:`baseline` was called (or :meth:`changes` started)."""
        return self._last is not None

    def signature(self) -> _Signature:
        """What changes when kubelet swaps ``..data`` or anyone rewrites a file."""
        out: list[object] = []
        for path in self.files:
            out.extend((_stat(path.parent), _readlink(path.parent / DATA_LINK), _stat(path)))
        return tuple(out)

    def read(self) -> Snapshot:
        """Re-read every watched file whole."""
        return Snapshot(tuple((p, _read(p)) for p in self.files))

    def baseline(self, snapshot: Snapshot | None = None) -> Snapshot:
        """Set (or read) the snapshot later changes are compared against."""
        self._sig = self.signature()
        self._last = snapshot if snapshot is not None else self.read()
        return self._last

    async def _settle(self, sig: _Signature) -> _Signature:
        for _ in range(MAX_DEBOUNCE_ROUNDS):
            await asyncio.sleep(self.debounce_s)
            now = self.signature()
            if now == sig:
                return now
            sig = now
        log.warning(
            "watched files kept changing for %d rounds; reading anyway", MAX_DEBOUNCE_ROUNDS
        )
        return sig

    async def changes(self) -> AsyncGenerator[Snapshot, None]:
        """Yield a new snapshot after each settled change; runs until cancelled."""
        if self._last is None or self._sig is None:
            self.baseline()
        inotify = self._open_inotify()
        check_now = True  # a change between the baseline and the watches is seen too
        try:
            while True:
                if inotify is None:
                    if not check_now:
                        await asyncio.sleep(self.interval_s)
                elif not check_now:
                    await _readable(inotify)
                    inotify.drain()
                check_now = False
                now = self.signature()
                if now == self._sig:
                    continue
                self._sig = await self._settle(now)
                if inotify is not None:
                    inotify.drain()  # the events of the settled change itself
                    inotify = self._rewatch(inotify)
                snap = self.read()
                if snap != self._last:
                    self._last = snap
                    yield snap
        finally:
            if inotify is not None:
                inotify.close()

    def _open_inotify(self) -> DirWatch | None:
        if not self.use_inotify:
            return None
        try:
            watch = DirWatch()
        except InotifyUnavailable as err:
            self._fallback(err, None)
            return None
        return self._rewatch(watch)

    def _rewatch(self, watch: DirWatch) -> DirWatch | None:
        """Point the watches at the directories now (a swap moves the resolved one)."""
        try:
            watch.watch(self.directories())
        except InotifyUnavailable as err:
            self._fallback(err, watch)
            return None
        return watch

    def _fallback(self, err: OSError, watch: DirWatch | None) -> None:
        if watch is not None:
            watch.close()
        log.warning(
            "hot plug: inotify unavailable (%s); polling the spec and podinfo every %.1f s",
            err,
            self.interval_s,
            extra={"event": "hotplug-poll-fallback"},
        )
        self.use_inotify = False


async def _readable(watch: DirWatch) -> None:
    """Sleep until the inotify descriptor has events (no timer is armed)."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(watch.fd, wake)
    try:
        await ready
    finally:
        loop.remove_reader(watch.fd)

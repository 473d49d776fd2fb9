"""Spawning and watching the ``cloud-hypervisor`` process.

:meth:`VmmProcess.spawn` starts ``<binary> --api-socket path=<sock> --event-monitor fd=<N>
[extra args]`` with asyncio's subprocess support, the write end of a pipe passed as fd N,
and stdout (the guest serial console, ``serial: Tty``) and stderr captured. Called by
:mod:`hypervisor.cloud_hypervisor.adapter`, which reads :attr:`VmmProcess.events` (the
pipe's read end) and uses :meth:`VmmProcess.wait_for_socket` before the first request.
The process exit is noticed at once (a task awaits it; no polling of the pid).
:func:`require_binary` is the same "is it installed" check without spawning, for a caller
that wants to fail before it changes anything (the container image has no cloud-hypervisor).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence

from hypervisor.base import RunAs, signal_vmm
from hypervisor.errors import HypervisorError

__all__ = ["VmmProcess", "describe_exit", "require_binary", "missing_binary"]

log = logging.getLogger(__name__)
serial_log = logging.getLogger("hypervisor.cloud_hypervisor.serial")

_STDERR_LINES = 20
_SOCKET_POLL = 0.02
_LINE_LIMIT = 64 * 1024


def describe_exit(returncode: int, stderr_tail: str, name: str = "cloud-hypervisor") -> str:
    """One sentence for how the process ended, with the last stderr line when it failed."""
    if returncode < 0:
        try:
            signame = signal.Signals(-returncode).name
        except ValueError:
            signame = f"signal {-returncode}"
        return f"{name} was killed by {signame}"
    last = stderr_tail.strip().splitlines()[-1] if stderr_tail.strip() else ""
    if returncode == 0:
        return f"{name} exited with code 0"
    return f"{name} exited with code {returncode}" + (f": {last}" if last else "")


def missing_binary(binary: str) -> HypervisorError:
    """The error for a cloud-hypervisor binary that is not there, with the way out.

    Virtink specs run cloud-hypervisor by default, and the project's image carries only
    QEMU (cloud-hypervisor has no Debian package): the message says how to pick QEMU or
    where adding a pinned release to the image is described."""
    where = "does not exist" if os.sep in binary else "is not on PATH"
    return HypervisorError(
        f"cannot execute cloud-hypervisor binary {binary!r}: it {where}; run this VM with "
        "QEMU instead (--hypervisor qemu) or add a cloud-hypervisor release to the image "
        "(docs/image.md)"
    )


def require_binary(binary: str) -> None:
    """Raise :func:`missing_binary`'s error unless ``binary`` resolves to an executable."""
    if shutil.which(binary) is None:
        raise missing_binary(binary)


class VmmProcess:
    """A spawned VMM: pid, event-monitor stream, stderr tail, exit notification."""

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        events: asyncio.StreamReader,
        events_transport: asyncio.ReadTransport,
        on_serial: Callable[[str], None] | None,
    ) -> None:
        self._proc = proc
        self.events = events
        self._events_transport = events_transport
        self._on_serial = on_serial
        self._stderr: deque[str] = deque(maxlen=_STDERR_LINES)
        self._readers = [
            asyncio.create_task(self._pump_stderr(), name=f"ch-stderr-{proc.pid}"),
            asyncio.create_task(self._pump_stdout(), name=f"ch-serial-{proc.pid}"),
        ]
        self._exited = asyncio.create_task(self._wait_exit(), name=f"ch-wait-{proc.pid}")
        self.run_as: RunAs | None = None  # the user it runs as (signals: hypervisor.base)

    @classmethod
    async def spawn(
        cls,
        binary: str,
        api_socket: str,
        *,
        extra_args: Sequence[str] = (),
        on_serial: Callable[[str], None] | None = None,
        run_as: RunAs | None = None,
        api_fd: int | None = None,
    ) -> VmmProcess:
        """Start the VMM (as ``run_as``, else this process's user); raise HypervisorError
        naming ``binary`` if it cannot be executed. ``api_fd``: the API socket, already
        listening at ``api_socket`` (``--api-socket fd=N``: the VMM creates no file)."""
        read_fd, write_fd = os.pipe()
        argv = [
            binary,
            "--api-socket",
            f"path={api_socket}" if api_fd is None else f"fd={api_fd}",
            "--event-monitor",
            f"fd={write_fd}",
            *extra_args,
        ]
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                pass_fds=(write_fd,) if api_fd is None else (write_fd, api_fd),
                user=None if run_as is None else run_as.uid,
                group=None if run_as is None else run_as.gid,
                extra_groups=None if run_as is None else list(run_as.groups),
                # Own session: a Ctrl-C or a terminal's SIGINT reaches only the launcher,
                # which then shuts the guest down with the power button (docs/run.md).
                start_new_session=True,
            )
        except FileNotFoundError as err:
            os.close(read_fd)
            raise missing_binary(binary) from err
        except OSError as err:
            os.close(read_fd)
            raise HypervisorError(
                f"cannot execute cloud-hypervisor binary {binary!r}: {err}"
            ) from err
        finally:
            os.close(write_fd)
        log.info("cloud-hypervisor started", extra={"pid": proc.pid, "argv": argv})
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 20)
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb", buffering=0)
        )
        vmm = cls(proc, reader, transport, on_serial)
        vmm.run_as = run_as
        return vmm

    @property
    def pid(self) -> int:
        """The VMM's process id."""
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        """Exit status once the process has exited (negative: killed by that signal)."""
        return self._proc.returncode if self._exited.done() else None

    def stderr_tail(self) -> str:
        """The last lines the VMM wrote to stderr."""
        return "\n".join(self._stderr)

    async def _pump_stderr(self) -> None:
        assert self._proc.stderr is not None
        async for text in _lines(self._proc.stderr, "stderr"):
            self._stderr.append(text.rstrip())
            log.info("cloud-hypervisor: %s", text.rstrip())

    async def _pump_stdout(self) -> None:
        assert self._proc.stdout is not None
        async for text in _lines(self._proc.stdout, "serial console"):
            serial_log.info("%s", text)
            if self._on_serial is not None:
                self._on_serial(text)

    async def _wait_exit(self) -> int:
        code = await self._proc.wait()
        # Drain what the process wrote before it died (bounded: the pipes are at EOF soon).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*self._readers, return_exceptions=True), 2.0)
        log.info("cloud-hypervisor exited", extra={"pid": self.pid, "returncode": code})
        return code

    async def wait(self, within: float | None = None) -> int:
        """The exit status, once the process has exited (TimeoutError after ``within`` s)."""
        return await asyncio.wait_for(asyncio.shield(self._exited), within)

    def signal(self, signum: int) -> None:
        """Send ``signum`` unless the process has already exited."""
        if self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                signal_vmm(self._proc.pid, signum, self.run_as)

    async def wait_for_socket(self, path: str, within: float) -> None:
        """Return once ``path`` accepts connections; fail if the VMM exits or ``within`` s pass."""
        deadline = time.monotonic() + within
        for _ in range(int(within / _SOCKET_POLL) + 2):
            if self._exited.done():
                raise HypervisorError(
                    f"{describe_exit(self._exited.result(), self.stderr_tail())} "
                    f"before its API socket {path} appeared"
                )
            if _connectable(path):
                return
            left = deadline - time.monotonic()
            if left <= 0:
                break
            await asyncio.wait({self._exited}, timeout=min(_SOCKET_POLL, left))
        raise HypervisorError(
            f"cloud-hypervisor API socket {path} did not appear within {within:g} s"
        )

    async def close(self) -> None:
        """Release the pipes and reader tasks (the process must have exited or be killed)."""
        self._events_transport.close()
        for task in self._readers:
            task.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)


async def _lines(stream: asyncio.StreamReader, what: str) -> AsyncIterator[str]:
    """Decoded lines until EOF; a line longer than 64 KiB is dropped whole, not fatal.

    Split here rather than with ``readline()``, which fails on an over-long line and
    leaves its remainder to come back as a fragment; a reader that stopped would let
    the pipe fill and block the VMM on its next write.
    """
    pending = b""
    skipping = False  # inside an over-long line: drop up to its newline
    while chunk := await stream.read(65536):
        *complete, pending = (pending + chunk).split(b"\n")
        for raw in complete:
            if skipping or len(raw) > _LINE_LIMIT:
                if not skipping:
                    log.warning("dropped an over-long line from the cloud-hypervisor %s", what)
                skipping = False
                continue
            yield raw.decode(errors="replace").rstrip("\r")
        if len(pending) > _LINE_LIMIT:
            if not skipping:
                log.warning("dropped an over-long line from the cloud-hypervisor %s", what)
            skipping, pending = True, b""
    if pending and not skipping:
        yield pending.decode(errors="replace").rstrip("\r")


def _connectable(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        try:
            sock.connect(path)
        except OSError:
            return False
        return True

"""The privileged helper: the one process that keeps capabilities once the launcher has
dropped all of its own.

Made at start-up, before the launcher has a thread (:meth:`Helper.fork`, by the console
script :mod:`launcher.entry`; :meth:`Helper.spawn`, a fresh interpreter, for callers with
threads), and used through :class:`launcher.agent.AgentRunner` — the run's one
:class:`~launcher.nics.PodRunner` — for the privileged work left at run time: hot-plug
plumbing and exit cleanup (``discover``/``apply``/``cleanup``, each run by the helper in
a netlink child, :func:`launcher.netchild.call_once`), opening a plugged NIC's taps for the
VMM and its DHCP/RA servers' sockets (handed back as SCM_RIGHTS file descriptors).

What it keeps and how it is bounded:

* capabilities: only NET_ADMIN, NET_RAW and NET_BIND_SERVICE (of those it was given);
  ``no_new_privs``, so its netlink children never get more;
* input: one socketpair to the launcher; every message is decoded strictly as one of
  the typed requests of :mod:`launcher.privsep.codec` (JSON, never pickle); anything
  else gets an error answer and changes nothing; file descriptors the launcher sends
  along are closed unread;
* life: it dies with the launcher (``PR_SET_PDEATHSIG`` = SIGKILL, and it exits when its
  socket reaches EOF); it runs no thread and no event loop.

Protocol: request and answer are :func:`launcher.privsep.codec.frame` messages on a
SOCK_STREAM socketpair; the answer is ``{"ok": value}`` or ``{"error": text}``, its fds
attached to the answer's first byte. One request at a time (the client holds a lock).
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from launcher import logs
from launcher.errors import LauncherError, NetworkError
from launcher.privsep import caps
from launcher.privsep.codec import (
    HEADER,
    MAX_FDS,
    MAX_MESSAGE,
    REQUESTS,
    Apply,
    Cleanup,
    CodecError,
    Discover,
    OpenSocket,
    OpenTap,
    Recover,
    Request,
    SignalProcess,
    answer_type,
    decode_request,
    decode_value,
    encode_request,
    encode_value,
    frame,
)

if TYPE_CHECKING:
    import subprocess

# Lean imports (no asyncio, argparse or subprocess at import time): the console script
# forks the helper before the launcher imports asyncio, so the helper carries little
# (launcher.startup, "the helper's imports on use").

__all__ = ["Helper", "HelperError", "HELPER_CAPS", "CALL_TIMEOUT_S", "serve", "main"]

log = logging.getLogger("launcher.privsep.helper")

#: The capabilities the helper keeps (of those it has): pod plumbing (NET_ADMIN), packet
#: and raw ICMPv6 sockets (NET_RAW), DHCP ports 67 and 547 (NET_BIND_SERVICE), and
#: signals to the VMM, which runs as another user (KILL; only the launcher's children).
HELPER_CAPS = ("NET_ADMIN", "NET_RAW", "NET_BIND_SERVICE", "KILL")
#: Bounds one request (a hot-plug apply runs a netlink child: ≤ 60 s) and a reply read.
CALL_TIMEOUT_S = 75.0
_NETLINK_TIMEOUT_S = 60.0


class HelperError(NetworkError):
    """The helper refused or failed a request, or is gone."""


# --------------------------------------------------------------------------- transport


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = []
    while size:
        chunk = sock.recv(size)
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _recv_message(sock: socket.socket) -> tuple[bytes, list[int]]:
    """One framed message and the fds attached to its first bytes (EOFError at EOF)."""
    header, fds, _flags, _addr = socket.recv_fds(sock, HEADER.size, MAX_FDS)
    if not header:
        for fd in fds:
            os.close(fd)
        raise EOFError
    try:
        if len(header) < HEADER.size:
            header += _recv_exactly(sock, HEADER.size - len(header))
        (size,) = HEADER.unpack(header)
        if size > MAX_MESSAGE:
            raise CodecError(f"a {size}-byte message is longer than {MAX_MESSAGE}")
        return _recv_exactly(sock, size), fds
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


# --------------------------------------------------------------------------- the helper


def _run(request: Request) -> tuple[Any, list[int]]:
    """Carry out one decoded request: (answer value, fds to hand back)."""
    if isinstance(request, OpenSocket):
        from dhcp.sockets import SocketRequest, open_socket  # noqa: PLC0415 - startup: helper imports on use

        sock = open_socket(SocketRequest(request.kind, request.interface, request.port))
        return None, [sock.detach()]
    if isinstance(request, OpenTap):
        from hypervisor.taps import open_tap  # noqa: PLC0415 - startup: helper imports on use

        if not 1 <= request.queues <= 64:
            raise CodecError(f"queues: {request.queues} is not between 1 and 64")
        return None, open_tap(request.name, request.queues)
    if isinstance(request, SignalProcess):
        _signal_child_of_launcher(request.pid, request.signum)
        return None, []
    from launcher.netchild import call_once  # noqa: PLC0415 - startup: helper imports on use

    if isinstance(request, Discover):
        return call_once("discover", None, request.state_dir, timeout=_NETLINK_TIMEOUT_S), []
    if isinstance(request, Apply):
        return call_once("apply", request.plan, request.state_dir, timeout=_NETLINK_TIMEOUT_S), []
    if isinstance(request, Cleanup):
        call_once("cleanup", request.plan, request.state_dir, timeout=_NETLINK_TIMEOUT_S)
        return None, []
    if isinstance(request, Recover):
        return bool(call_once("recover", request.state_dir, timeout=_NETLINK_TIMEOUT_S)), []
    raise CodecError(f"{type(request).__name__} is not a helper request")


_SIGNALS = (signal.SIGCONT, signal.SIGTERM, signal.SIGKILL)


def _signal_child_of_launcher(pid: int, signum: int) -> None:
    """``signum`` to ``pid`` if it is one of the stop signals and ``pid`` is a child of the
    launcher (checked through a pidfd, so a reused pid cannot be hit). A process already
    gone is not an error (as ``kill`` callers suppress ProcessLookupError)."""
    if signum not in _SIGNALS:
        raise CodecError(f"signum: {signum} is not SIGCONT, SIGTERM or SIGKILL")
    if pid <= 1:
        raise CodecError(f"pid: {pid} is not a child of the launcher")
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return  # gone already (a second stop signal raced its exit): nothing to do
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            ppid = int(stat.read().rpartition(")")[2].split()[1])
        if ppid != os.getppid():
            raise CodecError(f"pid: {pid} is not a child of the launcher")
        with contextlib.suppress(ProcessLookupError):  # exited meanwhile
            signal.pidfd_send_signal(pidfd, signum)
    except FileNotFoundError:
        return  # reaped between the pidfd and the read: gone
    finally:
        os.close(pidfd)


def _answer(sock: socket.socket, data: Any, fds: list[int]) -> None:
    try:
        message = frame(data)
        if fds:
            socket.send_fds(sock, [message], fds)
        else:
            sock.sendall(message)
    finally:
        for fd in fds:
            os.close(fd)


def serve(sock: socket.socket) -> int:
    """Answer the launcher's requests on ``sock`` until it closes (returns 0)."""
    while True:
        try:
            body, stray = _recv_message(sock)
        except (EOFError, ConnectionError):
            return 0
        except CodecError as err:  # cannot resync the stream after a bad length: leave
            log.error("privileged helper: %s; exiting", err)
            return 3
        started = time.monotonic()
        for fd in stray:  # the launcher never sends fds: closed unread
            os.close(fd)
        op = "?"
        fds: list[int] = []
        try:
            if stray:
                raise CodecError(f"a request came with {len(stray)} file descriptor(s)")
            request = decode_request(body)
            op = type(request).__name__
            value, fds = _run(request)
            reply: Any = {"ok": encode_value(value)}
        except CodecError as err:
            log.warning("privileged helper refused a request: %s", err)
            reply = {"error": f"refused: {err}"}
        except (LauncherError, OSError, ValueError) as err:
            reply = {"error": str(err) or type(err).__name__}
        except Exception as err:  # every failure is answered, none ends the helper
            log.debug("traceback", exc_info=err)
            reply = {"error": f"{type(err).__name__}: {err}"}
        try:
            _answer(sock, reply, fds)
        except (BrokenPipeError, ConnectionError):
            return 0
        log.debug(
            "privileged helper: %s took %.1f ms",
            op,
            (time.monotonic() - started) * 1000,
            extra={"event": "helper-op", "op": op},
        )


def _ignore(signum: int, frame: object) -> None:
    del signum, frame


def _become_helper(parent: int) -> None:
    """Die with the launcher, keep only HELPER_CAPS, never gain more on exec."""
    # A stop signal is the launcher's to handle (the run's cleanup needs the helper): a
    # handler that does nothing (unlike SIG_IGN, it is not inherited across exec by the
    # netlink children); the helper ends with the launcher, below.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _ignore)
    caps.set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != parent:  # the launcher died before the signal was armed
        os._exit(0)
    kept = caps.limit_to(HELPER_CAPS)
    caps.set_no_new_privs()
    log.debug(
        "privileged helper started with %s",
        ",".join(caps.names(kept.permitted)) or "no capabilities",
        extra={"event": "helper-started"},
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m launcher.privsep.helper --fd N``: serve on the inherited socket."""
    import argparse  # noqa: PLC0415 - startup: helper imports on use

    parser = argparse.ArgumentParser(prog="python -m launcher.privsep.helper")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True)
    args = parser.parse_args(argv)
    logs.configure(args.log_level)
    _become_helper(args.parent)
    return serve(socket.socket(fileno=args.fd))


# --------------------------------------------------------------------------- the client


@dataclass(frozen=True, slots=True)
class _Proc:
    pid: int
    popen: subprocess.Popen[bytes] | None  # None: forked

    def wait(self, timeout: float) -> int | None:
        if self.popen is not None:
            import subprocess  # noqa: PLC0415 - startup: helper imports on use

            try:
                return self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                return None
        deadline = time.monotonic() + timeout
        while True:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                return -1
            if pid == self.pid:
                return os.waitstatus_to_exitcode(status)
            if time.monotonic() > deadline:
                return None
            time.sleep(0.02)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)


class Helper:
    """The launcher's end of the privileged helper (see the module docstring)."""

    def __init__(self, proc: _Proc, sock: socket.socket) -> None:
        self._proc = proc
        self._sock = sock
        self._lock = threading.Lock()
        self._closed = False

    @property
    def pid(self) -> int:
        """The helper's pid."""
        return self._proc.pid

    @classmethod
    def fork(cls, log_level: str | None = None) -> Helper:
        """Fork the helper; call only while this process has a single thread."""
        ours, theirs = socket.socketpair()
        parent = os.getpid()
        # The interpreter's objects so far go to the permanent generation: the helper's
        # collections never walk them, so their pages stay shared with the launcher
        # (copy-on-write) instead of being copied into the helper.
        gc.freeze()
        try:
            pid = os.fork()
        except OSError as err:
            gc.unfreeze()
            ours.close()
            theirs.close()
            raise HelperError(f"cannot fork the privileged helper: {err.strerror or err}") from err
        if pid == 0:  # the helper: serve, and never return into the caller's code
            code = 70
            try:
                ours.close()
                # Inherit nothing but stdio and our socket (an open end of the netlink
                # child's socketpair here would keep that child from seeing EOF).
                keep = theirs.fileno()
                os.closerange(3, keep)
                os.closerange(keep + 1, _max_fd())
                gc.enable()  # the launcher pauses it for its start-up (launcher.startup)
                if log_level is not None:
                    logs.configure(log_level)
                _become_helper(parent)
                code = serve(theirs)
            except BaseException as err:  # noqa: BLE001 - nothing may unwind into the parent's code
                with contextlib.suppress(Exception):
                    log.error("the privileged helper failed: %s: %s", type(err).__name__, err)
            finally:
                os._exit(code)
        gc.unfreeze()
        theirs.close()
        return cls(_Proc(pid, None), ours)

    @classmethod
    def spawn(cls) -> Helper:
        """Start the helper as a fresh interpreter (safe in a process with threads; the
        parent-death signal follows the calling thread: call it from the event loop's)."""
        import subprocess  # noqa: PLC0415 - startup: helper imports on use

        ours, theirs = socket.socketpair()
        level = logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()
        argv = [sys.executable, "-m", "launcher.privsep.helper", "--log-level", level]
        argv += ["--fd", str(theirs.fileno()), "--parent", str(os.getpid())]
        try:
            popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, pass_fds=(theirs.fileno(),))
        except OSError as err:
            ours.close()
            raise HelperError(f"cannot start the privileged helper: {err}") from err
        finally:
            theirs.close()
        return cls(_Proc(popen.pid, popen), ours)

    def call_blocking(
        self, request: Request, timeout: float = CALL_TIMEOUT_S
    ) -> tuple[Any, list[int]]:
        """Send ``request``, wait (bounded) for its answer: (value, fds). Blocking."""
        message = encode_request(request)
        op = type(request).__name__
        with self._lock:
            if self._closed:
                raise HelperError(f"the privileged helper is closed ({op})")
            self._sock.settimeout(timeout)
            try:
                self._sock.sendall(message)
                body, fds = _recv_message(self._sock)
            except TimeoutError as err:
                self._closed = True  # a late answer would be read as the next one's
                raise HelperError(
                    f"the privileged helper did not answer {op} in {timeout:.0f} s"
                ) from err
            except (EOFError, OSError) as err:
                raise HelperError(f"the privileged helper is gone ({op}): {err or 'EOF'}") from err
        try:
            reply = json.loads(body)
            if not isinstance(reply, dict) or len(reply) != 1:
                raise CodecError("answer must be an object with one key")
            if "error" in reply:
                raise HelperError(f"the privileged helper failed {op}: {reply['error']}")
            value = decode_value(answer_type(_op(request)), reply["ok"], "answer")
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        return value, fds

    async def call(
        self,
        request: Request,
        timeout: float = CALL_TIMEOUT_S,  # noqa: ASYNC109 - bounds the helper, not the caller
    ) -> tuple[Any, list[int]]:
        """:meth:`call_blocking` in a worker thread."""
        import asyncio  # noqa: PLC0415 - startup: helper imports on use

        return await asyncio.to_thread(self.call_blocking, request, timeout)

    def close_blocking(self, timeout: float = 5.0) -> int | None:
        """Close the socket (the helper exits at EOF); killed after ``timeout``."""
        with self._lock:
            self._closed = True
            self._sock.close()
        code = self._proc.wait(timeout)
        if code is None:
            log.warning("the privileged helper %d did not exit; killed it", self._proc.pid)
            self._proc.kill()
            code = self._proc.wait(5.0)
        return code

    async def close(self) -> None:
        """:meth:`close_blocking` in a worker thread."""
        import asyncio  # noqa: PLC0415 - startup: helper imports on use

        await asyncio.to_thread(self.close_blocking)


def _max_fd() -> int:
    try:
        return int(os.sysconf("SC_OPEN_MAX"))
    except (OSError, ValueError):
        return 1 << 16


def _op(request: Request) -> str:
    return next(op for op, (cls, _) in REQUESTS.items() if isinstance(request, cls))


if __name__ == "__main__":
    sys.exit(main())

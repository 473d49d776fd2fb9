"""The netlink child's process side: fork or start it, its protocol, its serving loop.

Called by the console script (:func:`launcher.startup.fork_children` forks the start-up
child with :func:`fork` first thing, before any other import), by
:class:`launcher.agent.Agent` (the launcher's asynchronous client of that child), by the
privileged helper (:func:`call_once`: hot plug and exit cleanup after the capability
drop) and as ``python -m launcher.netchild``. The launcher lives as long as its VM, but
it needs netlink only for moments; pyroute2 costs ≈14 MiB of RSS and ≈200 ms of imports
(more than the rest of the launcher together), so the long-lived process never imports
it: ``discover``, ``apply``, ``cleanup`` and ``recover`` run in this child, which
imports pyroute2 the lean way (:func:`launcher.network.netlink.lean_import`), answers,
and exits. The child inherits the launcher's network namespace, capabilities and stderr
(its log lines join the launcher's JSON log).

This module imports the standard library, :mod:`launcher.signals` and
:mod:`launcher.errors` only — no asyncio — so the console script can fork the child
before it imports anything else: the child's imports then run on the pod's second core
from the first milliseconds (``launcher.startup``'s table, *the fork*).

Protocol (a unix socket pair, or stdin/stdout for :func:`call_once`; our own code on
both ends, so pickle): a request is a 4-byte big-endian length and a pickled
``(op, args, kwargs)``; the answer is a length and a pickled ``("ok", value)`` or
``("error", exception)``. The child answers requests until its input closes. Its fd 1 is
pointed at stderr before any work (with stdin/stdout, after duplicating it for the
answers), so a library or a subprocess that prints cannot corrupt the answers. Every
wait on the child is bounded; a child that does not answer in time is killed and the
call fails with a :class:`NetworkError`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any, BinaryIO, Protocol

from launcher import signals
from launcher.errors import LauncherError, NetworkError

__all__ = [
    "OPS",
    "CALL_TIMEOUT_S",
    "HEADER",
    "MAX_MESSAGE",
    "ChildProcess",
    "Forked",
    "Started",
    "fork",
    "spawn",
    "encode_request",
    "decode_answer",
    "call_once",
    "main",
]

log = logging.getLogger("launcher.netchild")  # also when run as __main__

#: The operations the child runs (the launcher.network functions of the same name).
OPS = ("discover", "apply", "cleanup", "recover")
CALL_TIMEOUT_S = 60.0
HEADER = struct.Struct(">I")
MAX_MESSAGE = 64 << 20


def _command(log_level: str) -> list[str]:
    return [sys.executable, "-m", "launcher.netchild", "--log-level", log_level]


def _log_level() -> str:
    return logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()


def encode_request(op: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """One framed request for ``launcher.network.<op>(*args, **kwargs)``."""
    if op not in OPS:
        raise ValueError(f"unknown netlink child operation {op!r}")
    data = pickle.dumps((op, args, kwargs))
    return HEADER.pack(len(data)) + data


def decode_answer(op: str, data: bytes) -> Any:
    """The value of an answer's body, or the child's exception raised here."""
    try:
        status, value = pickle.loads(data)  # noqa: S301 - our own child, over a private pipe
    except Exception as err:
        raise NetworkError(f"the netlink child sent an unreadable answer to {op!r}: {err}") from err
    if status == "ok":
        return value
    if isinstance(value, BaseException):
        raise value
    raise NetworkError(f"the netlink child failed {op!r}: {value}")


class ChildProcess(Protocol):
    """What a client needs of the child process (``subprocess.Popen`` has it)."""

    pid: int
    returncode: int | None

    def poll(self) -> int | None: ...
    def wait(self, timeout: float | None = None) -> int: ...
    def kill(self) -> None: ...


class Forked:
    """A child made by ``os.fork`` with Popen's poll/wait/kill."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # collected by someone else
                self.returncode = -1
            else:
                if pid == self.pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if (code := self.poll()) is not None:
            return code
        limit = 3600.0 if timeout is None else timeout
        try:  # a pidfd becomes readable when the child exits: no polling loop
            pidfd = os.pidfd_open(self.pid)
        except ProcessLookupError:
            pidfd = None
        if pidfd is not None:
            try:
                select.select([pidfd], [], [], limit)
            finally:
                os.close(pidfd)
        if (code := self.poll()) is None:
            raise subprocess.TimeoutExpired(f"pid {self.pid}", limit)
        return code

    def kill(self) -> None:
        if self.poll() is None:
            os.kill(self.pid, signal.SIGKILL)


class Started:
    """A started child and the launcher's end of its socket pair (the client wraps it)."""

    def __init__(self, proc: ChildProcess, sock: socket.socket) -> None:
        self.proc = proc
        self.sock = sock


def spawn() -> Started:
    """Start the child in a fresh interpreter (safe in a process that runs threads)."""
    ours, theirs = socket.socketpair()
    try:
        proc = subprocess.Popen(
            [*_command(_log_level()), "--fd", str(theirs.fileno())],
            stdin=subprocess.DEVNULL,
            pass_fds=(theirs.fileno(),),
        )
    except OSError as err:
        ours.close()
        raise NetworkError(f"cannot start the netlink child {sys.executable}: {err}") from err
    finally:
        theirs.close()
    return Started(proc, ours)


def fork(log_level: str | None = None) -> Started:
    """Fork the child from this process; call only while it has a single thread.

    ``log_level``: configure the child's logging (when this process has not yet).
    """
    ours, theirs = socket.socketpair()
    try:
        pid = os.fork()
    except OSError as err:
        ours.close()
        theirs.close()
        raise NetworkError(f"cannot fork the netlink child: {err.strerror or err}") from err
    if pid == 0:  # the child: serve, and never return into the caller's code
        code = 70
        try:
            signals.release()  # the parent's "record, do not die" is not the child's
            ours.close()
            # Inherit nothing but stdio and our socket.
            os.closerange(3, theirs.fileno())
            os.closerange(theirs.fileno() + 1, os.sysconf("SC_OPEN_MAX"))
            if log_level is not None:
                from launcher import logs  # noqa: PLC0415 - startup: the fork (in the child)

                logs.configure(log_level)
            code = _child(theirs)
        except BaseException as err:  # nothing may unwind into the parent's code
            code = 70
            with contextlib.suppress(Exception):  # the parent reports "exited (status 70)"
                log.error("the netlink child failed: %s: %s", type(err).__name__, err)
                log.debug("traceback", exc_info=err)
        finally:
            os._exit(code)
    theirs.close()
    return Started(Forked(pid), ours)


def call_once(op: str, *args: Any, timeout: float = CALL_TIMEOUT_S, **kwargs: Any) -> Any:
    """Run one operation in a fresh child and wait for it (blocking: call from a thread)."""
    try:
        done = subprocess.run(
            _command(_log_level()),
            input=encode_request(op, args, kwargs),
            stdout=subprocess.PIPE,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as err:
        raise NetworkError(f"the netlink child did not finish {op!r} in {timeout:.0f} s") from err
    except OSError as err:
        raise NetworkError(f"cannot start the netlink child {sys.executable}: {err}") from err
    out = done.stdout
    if len(out) < HEADER.size:
        raise NetworkError(
            f"the netlink child exited (status {done.returncode}) before answering {op!r}"
        )
    (size,) = HEADER.unpack(out[: HEADER.size])
    return decode_answer(op, out[HEADER.size : HEADER.size + size])


# --------------------------------------------------------------------------- the child


def _serve(channel: BinaryIO, requests: BinaryIO, ops: dict[str, Callable[..., Any]]) -> int:
    while True:
        header = requests.read(HEADER.size)
        if len(header) < HEADER.size:
            return 0  # stdin closed: the launcher is done with us
        (size,) = HEADER.unpack(header)
        op, args, kwargs = pickle.loads(requests.read(size))  # noqa: S301 - from our parent
        started = time.monotonic()
        try:
            reply: tuple[str, Any] = ("ok", ops[op](*args, **kwargs))
        except Exception as err:  # every failure goes back to the caller, which raises it
            if not isinstance(err, LauncherError):
                log.debug("traceback", exc_info=err)
            reply = ("error", err)
        try:
            data = pickle.dumps(reply)
        except Exception as err:  # noqa: BLE001 - an exception that does not pickle: its text
            data = pickle.dumps(("error", NetworkError(f"{op} failed: {reply[1]!s} ({err})")))
        channel.write(HEADER.pack(len(data)) + data)
        channel.flush()
        log.debug(
            "netlink child: %s took %.1f ms",
            op,
            (time.monotonic() - started) * 1000,
            extra={"event": "netlink-child-op", "op": op},
        )


def _child(sock: socket.socket | None) -> int:
    """The child's life: answer requests on ``sock`` (or stdin/stdout) until it closes."""
    requests: BinaryIO
    if sock is not None:
        requests, channel = sock.makefile("rb"), sock.makefile("wb")
    else:
        requests, channel = sys.stdin.buffer, os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # stdout is not the channel: anything printed goes to the log
    log.debug("netlink child started", extra={"event": "netlink-child-started"})
    from launcher import dataclass_code  # noqa: PLC0415 - startup: dataclass code

    # apply loads the ruleset in a thread beside the netlink work: hand the GIL over every
    # 0.5 ms, not every 5, or that thread waits for it between its libnftables calls
    sys.setswitchinterval(0.0005)
    dataclass_code.enable()  # before the network package defines its models (kept: the
    # plans this child unpickles may import more; it exits after start-up)
    from launcher.network.netlink import lean_import  # noqa: PLC0415 - startup: lean pyroute2

    lean_import()  # before the first request: the parent is still reading its spec
    from launcher.network import apply, cleanup, discover, recover  # noqa: PLC0415 - the same

    log.debug("netlink child ready", extra={"event": "netlink-child-ready"})
    ops: dict[str, Callable[..., Any]] = {
        "discover": discover,
        "apply": apply,
        "cleanup": cleanup,
        "recover": recover,
    }
    try:
        return _serve(channel, requests, ops)
    except (BrokenPipeError, ConnectionError, KeyboardInterrupt):
        return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m launcher.netchild``: answer requests until the input closes."""
    import argparse  # noqa: PLC0415 - startup: the fork (only the ``python -m`` child parses)

    parser = argparse.ArgumentParser(prog="python -m launcher.netchild")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--fd", type=int, help="a connected unix socket (else stdin/stdout)")
    args = parser.parse_args(argv)
    from launcher import logs  # noqa: PLC0415 - the same

    logs.configure(args.log_level)
    return _child(socket.socket(fileno=args.fd) if args.fd is not None else None)


if __name__ == "__main__":
    sys.exit(main())

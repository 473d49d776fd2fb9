"""The launcher's client of the netlink child, and the run's one pod runner.

Called by the composition root (start-up: one :class:`Agent` answers ``discover`` and
``apply``; shutdown: ``cleanup``, through :class:`AgentRunner`) and by the hot-plug
plumbing. The child itself — why it exists, how it is forked or started, its protocol
and serving loop — is :mod:`launcher.netchild` (standard library only, so the console
script forks it before importing anything else); this module is its asynchronous side.

The console script (:mod:`launcher.entry`) forks the start-up child first thing, so the
child's imports (pyroute2, the network package) run on the other core while the
launcher imports the rest and loads the spec, and the ``discover`` request the CLI sends
ahead is answered by the time the launcher needs it. Later calls (hot plug, cleanup)
start a fresh interpreter instead (forking a process that runs threads is unsafe), or
ask the privileged helper to (after the capability drop). Every wait on the child is
bounded; a child that does not answer in time is killed and the call fails with a
:class:`NetworkError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import subprocess
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from launcher import netchild
from launcher.errors import LauncherError, NetworkError
from launcher.netchild import call_once

if TYPE_CHECKING:  # the child's side imports the network package; this side only types it
    from dhcp.sockets import SocketRequest
    from launcher.network import ApplyResult, NetworkPlan, PodState
    from launcher.privsep.helper import Helper

__all__ = ["Agent", "AgentRunner", "call_once", "CALL_TIMEOUT_S"]

log = logging.getLogger(__name__)

CALL_TIMEOUT_S = netchild.CALL_TIMEOUT_S


class Agent:
    """One netlink child for a sequence of calls (start-up: discover, then apply).

    Made by :meth:`fork` (the console script, before asyncio starts, while the process
    has one thread: no interpreter start for the child) or :meth:`spawn` (a fresh
    interpreter, safe in a process that has threads). Both are synchronous and quick;
    the calls are async. The child talks over a unix socket pair.
    """

    def __init__(self, started: netchild.Started) -> None:
        self._proc = started.proc
        self._sock = started.sock
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._lock: asyncio.Lock | None = None
        self._sent: bytes | None = None  # a request sent ahead by prefetch(), not yet read

    @classmethod
    def spawn(cls) -> Agent:
        """Start the child in a fresh interpreter (it imports pyroute2 while the caller goes on)."""
        return cls(netchild.spawn())

    @classmethod
    def fork(cls, log_level: str | None = None) -> Agent:
        """Fork the child from this process; call only while it has a single thread."""
        return cls(netchild.fork(log_level))

    def prefetch(self, op: str, *args: Any, **kwargs: Any) -> None:
        """Send a request now (blocking, before the event loop runs); the later
        ``call(op, *args)`` with the same arguments only reads its answer. The child
        works on it as soon as its imports are done, while this process goes on."""
        request = netchild.encode_request(op, args, kwargs)
        self._sock.sendall(request)
        self._sent = request

    @property
    def pid(self) -> int:
        """The child's pid."""
        return self._proc.pid

    @property
    def alive(self) -> bool:
        """The child has not exited (it may still answer)."""
        return self._proc.poll() is None

    async def call(
        self,
        op: str,
        *args: Any,
        timeout: float = CALL_TIMEOUT_S,  # noqa: ASYNC109 - bounds the child, not the caller
        **kwargs: Any,
    ) -> Any:
        """Run ``launcher.network.<op>(*args)`` in the child; its exception is re-raised here.

        ``call`` = :meth:`send` + :meth:`receive`; a request already sent (by
        :meth:`prefetch` or :meth:`send`) with the same arguments is not sent again.
        """
        await self.send(op, *args, **kwargs)
        return await self.receive(op, timeout=timeout)

    async def send(self, op: str, *args: Any, **kwargs: Any) -> None:
        """Send a request without waiting for its answer (read it with :meth:`receive`)."""
        request = netchild.encode_request(op, args, kwargs)
        if request == self._sent:
            return
        try:
            _, writer = await self._connect()
            writer.write(request)
            await writer.drain()
        except ConnectionError as err:
            code = await self._wait(2.0)
            raise NetworkError(
                f"the netlink child exited (status {code}) before answering {op!r}"
            ) from err
        self._sent = request

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._streams is None:
            self._streams = await asyncio.open_unix_connection(sock=self._sock)
        return self._streams

    async def receive(self, op: str, *, timeout: float = CALL_TIMEOUT_S) -> Any:  # noqa: ASYNC109
        """The answer to the request sent last (``op`` names it in errors)."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            try:
                async with asyncio.timeout(timeout):
                    reader, _ = await self._connect()
                    self._sent = None
                    (size,) = netchild.HEADER.unpack(await reader.readexactly(netchild.HEADER.size))
                    if size > netchild.MAX_MESSAGE:
                        raise NetworkError(f"the netlink child sent a {size}-byte answer")
                    data = await reader.readexactly(size)
            except TimeoutError as err:
                await self.kill()
                raise NetworkError(
                    f"the netlink child did not finish {op!r} in {timeout:.0f} s"
                ) from err
            except (asyncio.IncompleteReadError, ConnectionError) as err:
                code = await self._wait(2.0)
                raise NetworkError(
                    f"the netlink child exited (status {code}) before answering {op!r}"
                ) from err
        return netchild.decode_answer(op, data)

    async def _wait(self, seconds: float) -> int | None:
        """The child's exit status after at most ``seconds``; killed if it is still there."""
        try:
            return await asyncio.to_thread(self._proc.wait, seconds)
        except subprocess.TimeoutExpired:
            await self.kill()
            return self._proc.returncode

    def release(self) -> None:
        """Close our end of the socket: the child finishes and exits (collected by close)."""
        if self._streams is not None:
            self._streams[1].close()
        self._sock.close()

    async def kill(self) -> None:
        """Kill the child (if still running) and collect it (bounded)."""
        self.release()
        if self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(self._proc.wait, 5.0)

    async def close(self) -> None:
        """Release the child and collect it; killed if it has not exited after 5 s."""
        self.release()
        if await self._wait(5.0) is None:
            log.warning("the netlink child %d did not exit; killed it", self._proc.pid)


class AgentRunner:
    """The launcher's :class:`launcher.nics.PodRunner`: every privileged change to the pod
    goes through a netlink child.

    While the start-up :class:`Agent` lives (discover and the boot NICs' apply), calls go
    to it; after :meth:`release` (the child exits once the boot network is applied),
    each call runs in a fresh child: started by the privileged helper
    (:mod:`launcher.privsep.helper`, typed requests) when the run has one, else by this
    process (:func:`call_once`, in a thread: tools and tests). Taps and server sockets
    are opened here while this process holds its capabilities, and by the helper after
    :meth:`drop_privileges`.
    """

    def __init__(
        self,
        state_dir: Path,
        agent: Agent | None = None,
        *,
        netns: str | None = None,
        helper: Helper | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.netns = netns  # None: the launcher's own (the pod's); a name only in tests
        self._agent = agent
        self.helper = helper
        self._privileged = True  # this process still holds its start-up capabilities

    async def _call(self, op: str, *args: Any, **kwargs: Any) -> Any:
        if self._agent is not None:
            return await self._agent.call(op, *args, **kwargs)
        if self.helper is not None and self.netns is None:
            from launcher.privsep.codec import Apply, Cleanup, Discover  # noqa: PLC0415 - startup: helper imports on use

            request: Discover | Apply | Cleanup
            if op == "discover":
                request = Discover(self.state_dir)
            else:
                request = (Apply if op == "apply" else Cleanup)(args[0], self.state_dir)
            value, _ = await self.helper.call(request)
            return value
        return await asyncio.to_thread(call_once, op, *args, **kwargs)

    async def discover(self) -> PodState:
        """The pod (``discover`` was sent ahead by the CLI with these same arguments)."""
        pod: PodState = await self._call("discover", self.netns, self.state_dir)
        return pod

    async def apply(self, plan: NetworkPlan) -> ApplyResult:
        """``apply`` in the child. A failed apply rolls the pod back itself, unless its
        child died (killed, out of time) or the call was cancelled (SIGTERM during
        set-up): then that child is stopped and a fresh one rolls the pod back from the
        transaction record (``recover``) before the error goes on."""
        extra = {"netns": self.netns} if self.netns is not None else {}
        try:
            result: ApplyResult = await self._call("apply", plan, self.state_dir, **extra)
        except BaseException as err:
            await self._recover_after(err)
            raise
        return result

    async def _recover_after(self, err: BaseException) -> None:
        agent = self._agent
        if agent is not None:
            if agent.alive and not isinstance(err, asyncio.CancelledError):
                return  # it answered: apply has rolled back (or kept its record) itself
            self._agent = None  # later calls each start a fresh child
            await agent.kill()
        try:
            # shielded: a second cancellation must not stop the roll-back half-way
            done = await asyncio.shield(self._recover())
        except (LauncherError, OSError) as again:
            log.error(
                "rolling the pod network back after %s failed too: %s (the next start retries)",
                err or type(err).__name__,
                again,
                extra={"event": "network-recover-failed"},
            )
            return
        if done:
            log.warning(
                "the pod network set-up was interrupted (%s); the pod is rolled back",
                err or type(err).__name__,
                extra={"event": "network-recovered"},
            )

    async def _recover(self) -> bool:
        """``recover`` in a fresh child: started by the helper when the run has one (this
        process may hold no capability by now), else by this process."""
        if self.helper is not None and self.netns is None:
            from launcher.privsep.codec import Recover  # noqa: PLC0415 - startup: helper imports on use

            value, _ = await self.helper.call(Recover(self.state_dir))
            return bool(value)
        return bool(await asyncio.to_thread(call_once, "recover", self.state_dir, netns=self.netns))

    async def cleanup(self, plan: NetworkPlan) -> None:
        extra = {"netns": self.netns} if self.netns is not None else {}
        await self._call("cleanup", plan, self.state_dir, **extra)

    async def open_tap(self, name: str, queues: int) -> list[int]:
        """``queues`` fds of tap ``name`` for the VMM (the caller closes them)."""
        if self._privileged or self.helper is None:
            from hypervisor.taps import open_tap  # noqa: PLC0415 - startup: helper imports on use

            return open_tap(name, queues)
        from launcher.privsep.codec import OpenTap  # noqa: PLC0415 - startup: helper imports on use

        _, fds = await self.helper.call(OpenTap(name, queues))
        if len(fds) != queues:
            for fd in fds:
                os.close(fd)
            raise NetworkError(f"the privileged helper sent {len(fds)} fds for tap {name!r}")
        return fds

    async def open_socket(self, request: SocketRequest) -> socket.socket:
        """A DHCP/RA server's privileged socket (:mod:`dhcp.sockets`)."""
        from dhcp.sockets import open_socket  # noqa: PLC0415 - startup: helper imports on use

        if self._privileged or self.helper is None:
            return open_socket(request)
        from launcher.privsep.codec import OpenSocket  # noqa: PLC0415 - startup: helper imports on use

        _, fds = await self.helper.call(OpenSocket(request.kind, request.interface, request.port))
        if len(fds) != 1:
            for fd in fds:
                os.close(fd)
            raise NetworkError(f"the privileged helper sent {len(fds)} fds for one socket")
        return socket.socket(fileno=fds[0])

    def open_link(self, interface: str) -> socket.socket:
        """The status probes' link-layer socket on ``interface`` (blocking: the probes run
        in worker threads); from the helper after :meth:`drop_privileges`."""
        from dhcp.sockets import SocketRequest, open_socket  # noqa: PLC0415 - startup: helper imports on use

        if self._privileged or self.helper is None:
            return open_socket(SocketRequest("link", interface))
        from launcher.privsep.codec import OpenSocket  # noqa: PLC0415 - startup: helper imports on use

        _, fds = self.helper.call_blocking(OpenSocket("link", interface))
        if len(fds) != 1:
            for fd in fds:
                os.close(fd)
            raise NetworkError(f"the privileged helper sent {len(fds)} fds for one socket")
        return socket.socket(fileno=fds[0])

    def request_signal(self, pid: int, signum: int) -> None:
        """Ask the helper to send ``signum`` to the VMM ``pid`` (it runs as another user;
        this process has no CAP_KILL). Does not wait (a thread carries the request; a
        failure is logged): the caller waits for the exit it asked for, bounded."""
        helper = self.helper
        if helper is None:
            os.kill(pid, signum)
            return

        def send() -> None:
            from launcher.privsep.codec import SignalProcess  # noqa: PLC0415 - startup: helper imports on use

            try:
                helper.call_blocking(SignalProcess(pid, signum))
            except LauncherError as err:
                log.error("signal %d to the VMM %d failed: %s", signum, pid, err)

        threading.Thread(target=send, name=f"signal-{pid}", daemon=True).start()

    def drop_privileges(self) -> None:
        """From now on taps and sockets come from the helper (this process has none)."""
        self._privileged = False

    def release(self) -> Agent | None:
        """Let the start-up child go (it exits); later calls start their own. Returns it,
        for the caller to collect."""
        agent, self._agent = self._agent, None
        if agent is not None:
            agent.release()
        return agent

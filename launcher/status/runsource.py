"""The status endpoint plugged into ``virt-launcher run``: RunContext → StatusSource.

:func:`status_hook` returns the coroutine ``launcher.run`` starts as its ``status`` task
(``run(options, status=status_hook(listen))``). That task serves :class:`StatusServer`
and keeps a :class:`RunSource` current: it polls the :class:`~launcher.run.RunContext`
(every 0.1 s) for phase, plan, DHCP servers and hypervisor state changes, and follows
the hypervisor's lifecycle events, recording each with its time so conditions carry
their transition times and ``timeToReadySeconds`` is measured, not guessed.

The endpoint is socket-activated inside the process: the task binds the listening socket
at once (so the port is taken, and a bind failure ends the run with exit 6, as before),
but imports the HTTP stack (:mod:`launcher.status.server`: aiohttp, prometheus-client,
psutil, a netlink reader — ≈17 MiB of RSS and ≈300 ms of imports, more than the rest
of a running launcher) only when the first connection is waiting on that socket, and
then hands the same socket to aiohttp, which accepts that connection. A VM nobody
debugs never pays for the endpoint; the first request waits for the import once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from hypervisor.base import Hypervisor
from hypervisor.machine import VmState
from launcher.errors import EXPECTED_ERRORS
from launcher.network.plan import NetworkPlan
from launcher.spec.model import VmSpec

from .listen import Listen, bind, parse_listen
from .model import Event, StatusBoard

if TYPE_CHECKING:
    from launcher.run import RunContext

    from .server import StatusServer

__all__ = ["RunSource", "status_hook", "POLL_S"]

log = logging.getLogger(__name__)

POLL_S = 0.1
_STOPPING_PHASES = frozenset({"stopping", "cleanup", "exited"})


class RunSource:
    """A :class:`~launcher.status.model.StatusSource` reading a RunContext."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        started = time.time() - (time.monotonic() - ctx.started_monotonic)
        self.board = StatusBoard(started_at=started)
        self._phase: str | None = None
        self._state: VmState | None = None

    @property
    def started_at(self) -> float:
        return self.board.started_at

    @property
    def spec(self) -> VmSpec | None:
        return self.ctx.spec

    @property
    def plan(self) -> NetworkPlan | None:
        return self.ctx.plan

    @property
    def hypervisor(self) -> Hypervisor | None:
        return self.ctx.hypervisor

    @property
    def dhcp_servers(self) -> Sequence[tuple[str, object]]:
        ctx = self.ctx
        out: list[tuple[str, object]] = [(s.config.interface, s) for s in ctx.dhcp4]
        out += [(s.config.interface, s) for s in ctx.dhcp6]
        out += [(s.config.interface, s) for s in ctx.ra]
        return out

    @property
    def marks(self) -> Mapping[str, tuple[bool, str, str, float]]:
        return self.board.marks

    @property
    def stopping(self) -> str | None:
        if self.board.stopping is None and self.ctx.phase in _STOPPING_PHASES:
            return self.ctx.phase
        return self.board.stopping

    def events(self) -> Sequence[Event]:
        return self.board.events()

    @property
    def hotplug(self) -> Mapping[str, tuple[str, str | None]]:
        manager = self.ctx.hotplug
        if manager is None:
            return self.board.hotplug
        return {s.name: (s.state.value, s.last_error) for s in manager.snapshot()}

    def poll(self) -> None:
        """Record what changed in the RunContext since the last poll."""
        ctx, board = self.ctx, self.board
        if ctx.spec is not None and board.spec is None:
            board.set_spec(ctx.spec)
        if ctx.phase != self._phase:
            self._phase = ctx.phase
            board.event("phase", ctx.phase)
            if ctx.phase in _STOPPING_PHASES:
                board.set_stopping(ctx.cause or f"launcher phase {ctx.phase}")
        if ctx.plan is not None and "NetworkApplied" not in board.marks:
            nics = ", ".join(n.name for n in ctx.plan.nics) or "no NICs"
            board.network_applied(f"pod network wired for {nics}")
        if ctx.plan is not None and "DhcpServing" not in board.marks:
            wanted = sum((n.dhcp4 is not None) + (n.dhcp6 is not None) for n in ctx.plan.nics)
            have = len(ctx.dhcp4) + len(ctx.dhcp6)
            if have >= wanted:
                board.dhcp_serving(f"{have} DHCP server(s) listening")
        hv = ctx.hypervisor
        if hv is not None and hv.state is not self._state:
            self._state = hv.state
            board.mark(
                "HypervisorRunning",
                hv.state is VmState.RUNNING,
                str(hv.state.value),
                f"{hv.kind} is {hv.state.value}",
            )


async def _follow_events(source: RunSource) -> None:
    """Copy the hypervisor's lifecycle events into the board until the VMM exits."""
    for _ in range(36000):  # waits for the hypervisor object: bounded to one hour
        if source.ctx.hypervisor is not None:
            break
        await asyncio.sleep(POLL_S)
    else:
        return
    hv = source.ctx.hypervisor
    try:
        async for ev in hv.events():
            source.board.lifecycle(ev)
    except EXPECTED_ERRORS as err:  # the supervisor reports VMM failures; status only shows them
        log.warning("status: lifecycle events ended: %s", err, extra={"event": "status-events"})


async def _poll(source: RunSource) -> None:
    while True:  # a task of the run's TaskGroup: cancelled when the run ends
        source.poll()
        await asyncio.sleep(POLL_S)


async def _first_connection(sock: socket.socket) -> None:
    """Wait until a connection is pending on the listening ``sock`` (without accepting it)."""
    loop = asyncio.get_running_loop()
    waiting: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not waiting.done():
            waiting.set_result(None)

    loop.add_reader(sock.fileno(), readable)
    try:
        await waiting
    finally:
        loop.remove_reader(sock.fileno())


def _server_class() -> type[StatusServer]:
    from .server import StatusServer  # noqa: PLC0415 - the HTTP stack, on first connection

    return StatusServer


def status_hook(
    listen: Listen | str, *, netns: str | None = None
) -> Callable[[RunContext], Coroutine[Any, Any, None]]:
    """The ``status`` task for :func:`launcher.run.run`: serve until cancelled."""
    where = parse_listen(listen) if isinstance(listen, str) else listen

    async def serve(ctx: RunContext) -> None:
        source = RunSource(ctx)
        source.poll()
        sock = bind(where)
        server: StatusServer | None = None
        port = sock.getsockname()[1] if where.path is None else None
        log.info(
            "status endpoint listening",
            extra={"event": "status-listening", "listen": str(where), "port": port},
        )
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(_poll(source), name="status-poll")
                group.create_task(_follow_events(source), name="status-events")
                await _first_connection(sock)
                server_class = await asyncio.to_thread(_server_class)
                server = server_class(source, where, netns=netns, sock=sock)
                await server.start()
                await asyncio.get_running_loop().create_future()
        finally:
            if server is not None:
                with contextlib.suppress(Exception):
                    await server.close()
            sock.close()

    return serve

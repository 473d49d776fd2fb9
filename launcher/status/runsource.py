"""The status endpoint plugged into ``virt-launcher run``: RunContext → StatusSource.

:func:`status_hook` returns the coroutine ``launcher.run`` starts as its ``status`` task
(``run(options, status=status_hook(listen))``). That task serves :class:`StatusServer`
and keeps a :class:`RunSource` current: it polls the :class:`~launcher.run.RunContext`
(every 0.1 s) for phase, plan, DHCP servers and hypervisor state changes, and follows
the hypervisor's lifecycle events, recording each with its time so conditions carry
their transition times and ``timeToReadySeconds`` is measured, not guessed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from hypervisor.base import Hypervisor
from hypervisor.machine import VmState
from launcher.errors import LauncherError
from launcher.network.plan import NetworkPlan
from launcher.spec.model import VmSpec

from .model import Event, StatusBoard
from .server import Listen, StatusServer

if TYPE_CHECKING:
    from launcher.run import RunContext

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
    except LauncherError as err:  # the supervisor reports VMM failures; status only shows them
        log.warning("status: lifecycle events ended: %s", err, extra={"event": "status-events"})


async def _poll(source: RunSource) -> None:
    while True:  # a task of the run's TaskGroup: cancelled when the run ends
        source.poll()
        await asyncio.sleep(POLL_S)


def status_hook(
    listen: Listen | str, *, netns: str | None = None
) -> Callable[[RunContext], Coroutine[Any, Any, None]]:
    """The ``status`` task for :func:`launcher.run.run`: serve until cancelled."""

    async def serve(ctx: RunContext) -> None:
        source = RunSource(ctx)
        source.poll()
        server = StatusServer(source, listen, netns=netns)
        await server.start()
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(_poll(source), name="status-poll")
                group.create_task(_follow_events(source), name="status-events")
                await asyncio.get_running_loop().create_future()
        finally:
            with contextlib.suppress(Exception):
                await server.close()

    return serve

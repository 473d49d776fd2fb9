"""One owner per guest NIC for its whole life: pod plumbing, DHCPv4/DHCPv6/RA servers, events.

Used by the composition root (``launcher.run``: the boot NICs, and every NIC at exit)
and by the hot-plug manager (``launcher.hotplug``: plug and unplug) — one set of owners,
:class:`Nics`, for all of them::

    async with Nics(runner, state_dir=…, on_event=…) as nics:   # exit: every NIC removed
        await nics.add(nic_plan, serve=False)   # boot: plumbing now, servers after the spawn
        async with asyncio.TaskGroup() as group:
            nics.bind(group.create_task)        # server tasks belong to the run's TaskGroup
            await nics.serve_all()              # the boot NICs' servers, once the VMM runs
            await nics.add(plugged)             # hot plug: plumbing, then servers
            await nics.remove("net1")           # unplug: servers closed, plumbing removed
            await nics.replan("net0", new)      # link refresh: plumbing again, servers renewed

A :class:`NicOwner` applies its NIC's plumbing through the one injected
:class:`PodRunner` (all privileged netlink/nftables work: the netlink child in a real
launcher, in-process calls in tests), opens its servers (one lifecycle for all three
kinds, :class:`dhcp.lifecycle.Server`), runs each as a named task (``dhcp4-<nic>``,
``dhcp6-<nic>``, ``ra-<nic>``) and reports what happens as :class:`NicEvent` values.
Closing an owner closes its servers (the RA server sends its final advert) and removes
its plumbing; the pod gets back what the CNI gave it. A server that fails at run time
ends the run with a NetworkError when its NIC is ``critical`` (the boot NICs: the guest
would lose its network), and is only reported for a hot-plugged NIC (hot plug never ends
a running VM).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import socket
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self

from dhcp.errors import DhcpError
from launcher.errors import NetworkError
from launcher.network import ApplyResult, NetworkPlan, NicPlan, PodState, apply, cleanup, discover
from launcher.network.nftables import render

if TYPE_CHECKING:
    from dhcp.lifecycle import Server
    from dhcp.sockets import SocketOpener, SocketRequest

__all__ = [
    "Nics",
    "NicOwner",
    "NicEvent",
    "NicState",
    "PodRunner",
    "LocalRunner",
    "Spawner",
    "SERVER_TIMEOUT_S",
]

log = logging.getLogger(__name__)

#: Bounds opening one server and waiting for one server task to end.
SERVER_TIMEOUT_S = 10.0

Spawner = Callable[[Coroutine[Any, Any, None], str], "asyncio.Task[None]"]


class PodRunner(Protocol):
    """Every privileged change to the pod netns goes through one of these."""

    async def discover(self) -> PodState:
        """The pod netns as it is now (originals from the state dir where recorded)."""
        ...

    async def apply(self, plan: NetworkPlan) -> ApplyResult:
        """Make the pod match ``plan`` (idempotent; rolls itself back on failure)."""
        ...

    async def cleanup(self, plan: NetworkPlan) -> None:
        """Remove what ``plan``'s NICs created and give the pod back its originals."""
        ...

    async def open_tap(self, name: str, queues: int) -> list[int]:
        """``queues`` fds of the existing tap ``name``, for the VMM (caller closes them)."""
        ...

    async def open_socket(self, request: SocketRequest) -> socket.socket:
        """A DHCP/RA server's privileged socket (:mod:`dhcp.sockets`)."""
        ...


@dataclass(frozen=True, slots=True)
class LocalRunner:
    """A :class:`PodRunner` calling ``launcher.network`` in this process (in a thread).

    For tests and tools; the launcher itself never imports pyroute2 into its long-lived
    process and uses :class:`launcher.agent.AgentRunner`.
    """

    state_dir: Path
    netns: str | None = None

    async def discover(self) -> PodState:
        return await asyncio.to_thread(discover, self.netns, self.state_dir)

    async def apply(self, plan: NetworkPlan) -> ApplyResult:
        return await asyncio.to_thread(apply, plan, self.state_dir, netns=self.netns)

    async def cleanup(self, plan: NetworkPlan) -> None:
        await asyncio.to_thread(cleanup, plan, self.state_dir, netns=self.netns)

    async def open_tap(self, name: str, queues: int) -> list[int]:
        from hypervisor.taps import open_tap  # noqa: PLC0415 - startup: hot plug only

        return open_tap(name, queues)

    async def open_socket(self, request: SocketRequest) -> socket.socket:
        from dhcp.sockets import open_socket  # noqa: PLC0415 - startup: servers after the spawn

        return open_socket(request)


class NicState(enum.StrEnum):
    """Where an owned NIC stands."""

    PLUMBED = "plumbed"  # pod side wired, no servers yet (boot, before the VMM runs)
    SERVING = "serving"  # its DHCP/RA servers answer the guest
    REMOVED = "removed"


@dataclass(frozen=True, slots=True)
class NicEvent:
    """Something that happened to one NIC, for the status board and the log."""

    time: float
    nic: str
    kind: str  # plumbed, serving, server-failed, rewired, replanned, removed
    message: str = ""


class NicOwner:
    """Owns one guest NIC (see the module docstring); made by :meth:`Nics.add`."""

    def __init__(self, plan: NicPlan, nics: Nics, *, critical: bool) -> None:
        self.plan = plan
        self.critical = critical
        self.state = NicState.PLUMBED
        self.error: str | None = None
        self._nics = nics
        self._servers: list[tuple[str, Server]] = []
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def name(self) -> str:
        """The spec interface name."""
        return self.plan.name

    @property
    def servers(self) -> tuple[tuple[str, Server], ...]:
        """``(kind, server)`` for each open server: ``dhcp4``, ``dhcp6``, ``ra``."""
        return tuple(self._servers)

    async def serve(self) -> None:
        """Open the NIC's servers and run each as a task of the bound TaskGroup.

        A server that cannot open is a NetworkError; the ones already open are closed.
        """
        if self.state is not NicState.PLUMBED:
            return
        try:
            opener = self._nics.runner.open_socket
            for kind, server in _make_servers(self.plan, self._nics.state_dir, opener):
                what = f"{_WHAT[kind]} on {self.plan.bridge.name}"
                try:
                    async with asyncio.timeout(SERVER_TIMEOUT_S):
                        await server.open()
                except (OSError, TimeoutError, DhcpError) as err:
                    raise NetworkError(f"{what} could not start: {err or 'timed out'}") from err
                self._servers.append((kind, server))
                coro = self._run(kind, server, what)
                try:
                    task = self._nics.spawner(coro, f"{kind}-{self.name}")
                except BaseException:  # the run's TaskGroup is already shutting down
                    coro.close()  # never started: no "coroutine was never awaited"
                    raise
                self._tasks.append(task)
        except BaseException:
            await self.close_servers()
            raise
        self.state = NicState.SERVING
        self._nics.event(self.name, "serving", f"{len(self._servers)} server(s) listening")

    async def _run(self, kind: str, server: Server, what: str) -> None:
        try:
            await server.serve()
        except (OSError, DhcpError) as err:
            self.error = f"{what} failed: {err}"
        else:  # serve() returns only when its socket is gone
            self.error = f"{what} stopped on its own"
        self._nics.event(self.name, "server-failed", self.error)
        if self.critical:
            raise NetworkError(self.error)
        log.error("%s; the VM keeps running", self.error, extra={"event": "server-failed"})

    async def close_servers(self) -> None:
        """Cancel the server tasks and close the servers (the RA server's final advert)."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=SERVER_TIMEOUT_S)
        servers, self._servers = self._servers, []
        for _kind, server in reversed(servers):
            try:
                async with asyncio.timeout(SERVER_TIMEOUT_S):
                    await server.close()
            except (OSError, TimeoutError) as err:
                log.warning("closing a server of %s failed: %s", self.name, err)
        if self.state is NicState.SERVING:
            self.state = NicState.PLUMBED


_WHAT = {"dhcp4": "DHCPv4 server", "dhcp6": "DHCPv6 server", "ra": "router advertisements"}


def _make_servers(
    nic: NicPlan, state_dir: Path, opener: SocketOpener | None = None
) -> Iterator[tuple[str, Server]]:
    """The servers the plan gives ``nic``, configured exactly as planned; their
    privileged sockets come from ``opener`` (the runner: this process or the helper;
    None: this process)."""
    if opener is None:
        from dhcp.sockets import open_local  # noqa: PLC0415 - startup: servers after the spawn

        opener = open_local
    if nic.dhcp4 is not None:
        from dhcp.v4.server import Dhcp4Server  # noqa: PLC0415 - startup: servers after the spawn

        yield "dhcp4", Dhcp4Server(nic.dhcp4, opener=opener)
    if nic.dhcp6 is not None:
        from dhcp.v6.server import Dhcp6Server  # noqa: PLC0415 - the same

        # The DUID is kept when the bridge's MAC could change (dhcp.v6.lease.server_duid).
        yield (
            "dhcp6",
            Dhcp6Server(
                nic.dhcp6,
                duid_file=state_dir / f"dhcp6-duid-{nic.pod_interface}",
                opener=opener,
            ),
        )
    if nic.ra is not None:
        from dhcp.ra import RaServer  # noqa: PLC0415 - the same

        yield "ra", RaServer(nic.ra, opener=opener)


class Nics:
    """The run's set of NIC owners: boot, hot plug, unplug and exit all go through it."""

    def __init__(
        self,
        runner: PodRunner,
        *,
        state_dir: Path,
        on_event: Callable[[NicEvent], None] | None = None,
    ) -> None:
        self.runner = runner
        self.state_dir = state_dir
        self._on_event = on_event
        self._owners: dict[str, NicOwner] = {}
        self._spawn: Spawner | None = None
        self.cleanup_error: str | None = None

    # ---- the set -----------------------------------------------------------------------

    def __iter__(self) -> Iterator[NicOwner]:
        return iter(tuple(self._owners.values()))

    def __contains__(self, name: object) -> bool:
        return name in self._owners

    def get(self, name: str) -> NicOwner | None:
        """The owner of interface ``name``, if it is wired."""
        return self._owners.get(name)

    @property
    def plans(self) -> tuple[NicPlan, ...]:
        """The plans of every wired NIC, in the order they were added."""
        return tuple(o.plan for o in self._owners.values())

    def servers(self) -> list[tuple[str, Server]]:
        """``(interface, server)`` for every open server (the status endpoint reads them)."""
        return [(o.plan.bridge.name, s) for o in self._owners.values() for _, s in o.servers]

    def bind(self, spawn: Spawner) -> None:
        """Server tasks from now on are made with ``spawn`` (the run's TaskGroup)."""
        self._spawn = spawn

    @property
    def spawner(self) -> Spawner:
        """How an owner starts its server tasks."""
        if self._spawn is None:
            raise RuntimeError("Nics.bind() must be called before servers are started")
        return self._spawn

    def event(self, nic: str, kind: str, message: str = "") -> None:
        """Report one NIC event (status board, log)."""
        log.info("interface %s: %s %s", nic, kind, message, extra={"event": f"nic-{kind}"})
        if self._on_event is not None:
            self._on_event(NicEvent(time.time(), nic, kind, message))

    # ---- add / remove ------------------------------------------------------------------

    async def add(self, nic: NicPlan, *, serve: bool = True, critical: bool = False) -> NicOwner:
        """Wire ``nic``'s pod side, then (``serve``) open its servers.

        The plumbing is applied through the runner with the nftables document of every
        NIC wired so far plus this one (one table, one transaction). A failure leaves
        the pod as it was for this NIC (apply rolls back; servers that opened are
        closed, the plumbing removed) and raises.
        """
        if nic.name in self._owners:
            raise NetworkError(f"interface {nic.name!r} is already wired")
        own = render([nic.nft])
        document = render([*(p.nft for p in self.plans), nic.nft]) if own else ""
        result = await self.runner.apply(
            NetworkPlan(nics=(nic,), sysctls=nic.sysctls, nftables=document)
        )
        owner = NicOwner(nic, self, critical=critical)
        self._owners[nic.name] = owner
        self.event(nic.name, "plumbed", f"{result.changes} change(s) in the pod")
        if serve:
            try:
                await owner.serve()
            except BaseException:
                await self._remove_quietly(nic.name)
                raise
        return owner

    async def _remove_quietly(self, name: str) -> None:
        """Roll back a NIC whose start failed; a failure here is logged, the first kept."""
        try:
            await self.remove(name)
        except (NetworkError, OSError) as err:
            log.error("rolling back interface %s failed: %s", name, err)

    async def serve_all(self) -> None:
        """Open the servers of every NIC added with ``serve=False`` (boot, after the spawn)."""
        for owner in self:
            await owner.serve()

    async def stop_serving(self) -> None:
        """Every NIC's servers closed (the RA servers' final adverts sent); plumbing kept.

        The run calls this when the VM has ended, so the TaskGroup holding the server
        tasks can finish; leaving the set (:meth:`close`) then removes the plumbing.
        """
        for owner in reversed(tuple(self._owners.values())):
            await owner.close_servers()

    async def replan(self, name: str, nic: NicPlan) -> NicOwner:
        """Wire the running NIC ``name`` to ``nic``, a new plan of it under the same names
        (the link refresh: the pod address changed). The plumbing is applied again
        (idempotent: it moves the new pod address off the pod port and loads the
        nftables document with the new guest addresses); when the plan differs, the
        NIC's servers are closed and opened again serving it. Raises like :meth:`add`.
        """
        owner = self._owners.get(name)
        if owner is None:
            raise NetworkError(f"interface {name!r} is not wired")
        if (nic.name, nic.index, nic.pod_interface) != (
            name,
            owner.plan.index,
            owner.plan.pod_interface,
        ):
            raise NetworkError(f"the new plan of {name!r} is for another NIC")
        plans = [nic if p.name == name else p for p in self.plans]
        document = render(p.nft for p in plans)
        result = await self.runner.apply(
            NetworkPlan(nics=(nic,), sysctls=nic.sysctls, nftables=document)
        )
        if nic == owner.plan:
            self.event(name, "rewired", f"{result.changes} change(s) in the pod, same plan")
            return owner
        serving = owner.state is NicState.SERVING
        await owner.close_servers()
        owner.plan = nic
        if serving:
            await owner.serve()
        self.event(name, "replanned", f"{result.changes} change(s) in the pod, servers renewed")
        return owner

    async def remove(self, name: str) -> None:
        """Close ``name``'s servers and remove its plumbing; the other NICs keep running
        (their nftables rules are loaded again: cleanup drops the launcher's table)."""
        owner = self._owners.pop(name, None)
        if owner is None:
            return
        await owner.close_servers()
        try:
            await self.runner.cleanup(NetworkPlan(nics=(owner.plan,)))
            document = render(p.nft for p in self.plans)
            if document:
                await self.runner.apply(NetworkPlan(nics=(), nftables=document))
        finally:
            owner.state = NicState.REMOVED
            self.event(name, "removed")

    async def close(self) -> None:
        """Exit: every NIC's servers closed, then all plumbing removed in one runner call.

        Never raises for a failed cleanup (the run's own outcome decides the exit code):
        it is logged as one ERROR line and kept in :attr:`cleanup_error`.
        """
        owners = list(self._owners.values())
        self._owners.clear()
        for owner in reversed(owners):
            await owner.close_servers()
        if owners:
            try:
                await self.runner.cleanup(NetworkPlan(nics=tuple(o.plan for o in owners)))
            except (NetworkError, OSError) as err:
                self.cleanup_error = str(err)
                log.error("network cleanup failed: %s", err, extra={"event": "cleanup-failed"})
        for owner in owners:
            owner.state = NicState.REMOVED
            self.event(owner.name, "removed")

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

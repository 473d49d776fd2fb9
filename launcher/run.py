"""``virt-launcher run``: the composition root: spec in, VM on the pod network, exit code out.

Called by :func:`launcher.cli.run` with :class:`RunOptions`. The sequence (docs/run.md):

1. load the spec (``launcher.spec.load``; invalid → exit 2);
2. resolve the files it names and build the hypervisor-neutral machine description
   (kernel/initrd under ``--volumes-dir``); pick the hypervisor (``--hypervisor`` or the
   spec's shape: Virtink → cloud-hypervisor, KubeVirt → QEMU);
3. discover → plan → apply the pod network (``launcher.network``; discover and apply in
   the netlink child, :mod:`launcher.agent`, so pyroute2 never enters this process;
   state in ``--state-dir``, so a restarted launcher in the same pod re-applies the same
   plan and the guest gets the same addresses; failure → exit 3), with QEMU's
   accelerator probe running beside it;
4. start the VMM through :class:`launcher.supervisor.Supervisor` (failure → exit 4);
5. meanwhile open the DHCPv4, DHCPv6 and router-advertisement servers of every guest NIC
   in process, from the plan (listening tens of ms after the spawn, before QEMU runs);
6. the status server hook (issue 7) runs as one more task;
7. wait: the VMM's exit or SIGTERM/SIGINT (power button → grace period → hard stop,
   exit 0 or 5);
8. shut down and clean up: every server task cancelled (the RA server sends its final
   advert with router lifetime 0), the network cleaned up, the termination log written.

Every long-lived task (DHCP/RA servers, the supervisor, the PID-1 reaper, the status
server) is a named task of ONE ``asyncio.TaskGroup``; a task that fails ends the run
with its error and that error's exit code. :class:`RunContext` holds what a status
server reads (phase, spec, plan, hypervisor, DHCP server snapshots).
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import ipaddress
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from hypervisor.base import serial_to_stdout
from launcher import logs
from launcher.agent import Agent, call_once
from launcher.errors import (
    EXIT_OK,
    EXPECTED_ERRORS,
    HypervisorError,
    LauncherError,
    NetworkError,
    UsageError,
    exit_code_for,
)
from launcher.machine import build_machine, choose_hypervisor
from launcher.network import DEFAULT_STATE_DIR, NetworkPlan, NicPlan, PlanOptions, PodState
from launcher.network import plan as plan_network
from launcher.network.names import IFNAMSIZ, POD_INTERFACE
from launcher.network.plan import DEFAULT_STATUS_PORT
from launcher.notls import without_ssl
from launcher.podinfo import DEFAULT_PODINFO_DIR, load_podinfo
from launcher.spec import VmSpec, load
from launcher.supervisor import (
    DEFAULT_TERMINATION_LOG,
    ChildReaper,
    Outcome,
    Supervisor,
    raise_memlock,
    write_termination_log,
)
from launcher.volumes import (
    DEFAULT_VOLUMES_DIR,
    FileState,
    ResolvedVolumes,
    VolumeLayout,
    prepare,
    require_present,
    resolve,
)

if TYPE_CHECKING:  # imported when first used: they are not on the way to the VMM spawn
    from dhcp.ra import RaServer
    from dhcp.v4.server import Dhcp4Server
    from dhcp.v6.server import Dhcp6Server
    from hypervisor.base import Hypervisor
    from hypervisor.machine import MachineConfig
    from hypervisor.qemu import AccelChoice
    from launcher.hotplug.manager import Manager as HotplugManager

__all__ = [
    "RunOptions",
    "RunContext",
    "run",
    "run_async",
    "dhcp_servers",
    "StatusHook",
    "SERIAL_PREFIX",
]

log = logging.getLogger(__name__)

SERIAL_PREFIX = "serial: "
CLEANUP_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class RunOptions:
    """What ``virt-launcher run`` is told on its command line (see docs/run.md)."""

    spec_path: Path
    state_dir: Path = DEFAULT_STATE_DIR
    hypervisor: str | None = None  # None: from the spec's shape
    qemu_binary: str = "qemu-system-x86_64"
    cloud_hypervisor_binary: str = "cloud-hypervisor"
    accel: str = "auto"
    volumes_dir: Path = DEFAULT_VOLUMES_DIR
    termination_log: Path | None = DEFAULT_TERMINATION_LOG
    pod_interface: str = POD_INTERFACE
    console_log: Path | None = None  # None: serial lines on stdout after SERIAL_PREFIX
    reap: bool | None = None  # None: reap orphans only when PID 1
    status_port: int = DEFAULT_STATUS_PORT  # the status endpoint's port: never DNATed
    podinfo: Path | None = DEFAULT_PODINFO_DIR  # downward API dir (Multus network-status)
    hotplug_ports: int | None = None  # QEMU root ports kept free for hot plug (None: default 4)


StatusHook = Callable[["RunContext"], Coroutine[Any, Any, None]]


@dataclass(slots=True)
class RunContext:
    """The state of one run; the status server (issue 7) reads it, nothing else writes it.

    ``phase`` is one of ``starting``, ``network``, ``dhcp``, ``hypervisor``, ``running``,
    ``stopping``, ``cleanup``, ``exited``.
    """

    options: RunOptions
    phase: str = "starting"
    started_monotonic: float = field(default_factory=time.monotonic)
    spec: VmSpec | None = None
    machine: MachineConfig | None = None
    plan: NetworkPlan | None = None
    hypervisor: Hypervisor | None = None
    supervisor: Supervisor | None = None
    dhcp4: list[Dhcp4Server] = field(default_factory=list)
    dhcp6: list[Dhcp6Server] = field(default_factory=list)
    ra: list[RaServer] = field(default_factory=list)
    hotplug: HotplugManager | None = None  # live NIC plug/unplug (issue 9)
    exit_code: int | None = None
    cause: str | None = None

    def set_phase(self, phase: str) -> None:
        """Move to ``phase`` and log it."""
        self.phase = phase
        log.info("phase %s", phase, extra={"event": "phase", "phase": phase})


# --------------------------------------------------------------------------- pieces


def dhcp_servers(
    nic: NicPlan, state_dir: Path
) -> tuple[Dhcp4Server | None, Dhcp6Server | None, RaServer | None]:
    """The DHCPv4, DHCPv6 and RA servers for one planned guest NIC (None where not planned)."""
    try:
        return _dhcp4(nic), _dhcp6(nic, state_dir), _ra(nic)
    except ValueError as err:
        raise NetworkError(
            f"the DHCP configuration planned for interface {nic.name!r} is invalid: {err}"
        ) from err


def _dhcp4(nic: NicPlan) -> Dhcp4Server | None:
    from dhcp.v4.config import Dhcp4Config as Dhcp4ServerConfig  # noqa: PLC0415 - see top
    from dhcp.v4.config import Lease4  # noqa: PLC0415
    from dhcp.v4.server import Dhcp4Server  # noqa: PLC0415

    d4 = nic.dhcp4
    if d4 is None:
        return None
    router = d4.routers[0] if d4.routers else None
    # The server adds the default route and, for a router outside the subnet, the
    # on-link host route to it; pass only the other classless routes.
    routes = tuple(
        (dst, hop)
        for dst, hop in d4.classless_routes
        if dst.prefixlen and not (router is not None and dst.prefixlen == 32 and dst[0] == router)
    )
    config = Dhcp4ServerConfig(
        interface=d4.interface,
        server_address=d4.server_address,
        leases=(Lease4(mac=d4.client_mac, address=d4.address, hostname=d4.hostname),),
        router=router,
        dns=d4.dns,
        search=d4.search,
        domain=d4.domain_name,
        hostname=d4.hostname,
        mtu=d4.mtu,
        routes=routes,
        lease_time=d4.lease_time_s,
        ntp=d4.ntp_servers,
        tftp_server=d4.tftp_server_name,
        boot_file=d4.boot_file_name,
        private_options=tuple((code, value.encode()) for code, value in d4.private_options),
    )
    return Dhcp4Server(config)


def _dhcp6(nic: NicPlan, state_dir: Path) -> Dhcp6Server | None:
    from dhcp.v6.lease import Config6, Lease6  # noqa: PLC0415 - see top
    from dhcp.v6.server import Dhcp6Server  # noqa: PLC0415

    d6 = nic.dhcp6
    if d6 is None:
        return None
    plen = nic.ra.prefixes[0].prefixlen if nic.ra is not None and nic.ra.prefixes else 128
    config = Config6(
        interface=d6.interface,
        leases=(
            Lease6(address=ipaddress.IPv6Interface(f"{d6.address}/{plen}"), mac=d6.client_mac),
        ),
        dns=d6.dns,
        search=d6.search,
        preferred_lifetime=d6.preferred_lifetime_s,
        valid_lifetime=d6.valid_lifetime_s,
        state_file=state_dir / f"dhcp6-duid-{nic.pod_interface}",
    )
    return Dhcp6Server(config)


def _ra(nic: NicPlan) -> RaServer | None:
    from dhcp.ra import RaConfig as RaServerConfig  # noqa: PLC0415 - see top
    from dhcp.ra import RaServer  # noqa: PLC0415

    ra = nic.ra
    if ra is None:
        return None
    mtu = ra.mtu if ra.mtu is not None and ra.mtu >= 1280 else None
    return RaServer(
        RaServerConfig(
            interface=ra.interface,
            prefixes=ra.prefixes,
            managed=ra.managed,
            other=ra.other,
            router_lifetime=ra.router_lifetime_s,
            mtu=mtu,
            rdnss=ra.rdnss,
            dnssl=ra.dnssl,
        )
    )


def _serial_sink(options: RunOptions) -> tuple[Callable[[str], None], TextIO | None]:
    if options.console_log is None:
        return serial_to_stdout(SERIAL_PREFIX), None
    try:
        out = open(options.console_log, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
    except OSError as err:
        raise UsageError(f"cannot open the console log {options.console_log}: {err}") from err

    def write(line: str) -> None:
        out.write(line + "\n")

    return write, out


async def _choose_accel(kind: str, options: RunOptions) -> AccelChoice | None:
    """QEMU's accelerator (the probe runs while the network is set up); None for others."""
    if kind != "qemu":
        return None
    from hypervisor.qemu import choose_accel  # noqa: PLC0415

    return await choose_accel(
        options.accel, binary=options.qemu_binary, cache_dir=options.state_dir
    )


def _make_hypervisor(
    kind: str, options: RunOptions, on_serial: Callable[[str], None], accel: AccelChoice | None
) -> Hypervisor:
    run_dir = options.state_dir / kind
    if kind == "qemu":
        from hypervisor.qemu import Qemu  # noqa: PLC0415

        if accel is None:
            raise HypervisorError("no QEMU accelerator was chosen")
        return Qemu(
            accel=accel.accel,
            binary=options.qemu_binary,
            run_dir=str(run_dir),
            on_serial=on_serial,
        )
    from hypervisor.cloud_hypervisor import CloudHypervisor  # noqa: PLC0415

    run_dir.mkdir(parents=True, exist_ok=True)
    return CloudHypervisor(
        binary=options.cloud_hypervisor_binary,
        api_socket=str(run_dir / "api.sock"),
        on_serial=on_serial,
    )


async def _serve(what: str, server_run: Awaitable[None]) -> None:
    """Run one DHCP/RA server until cancelled; its failure becomes a NetworkError."""
    from dhcp.errors import DhcpError  # noqa: PLC0415 - see top

    try:
        await server_run
    except (DhcpError, OSError) as err:
        raise NetworkError(f"{what} failed: {err}") from err
    raise NetworkError(f"{what} stopped on its own")


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error that ended the run: a LauncherError first, else the first exception."""
    flat: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            flat.append(exc)

    walk(group)
    for exc in flat:
        if isinstance(exc, EXPECTED_ERRORS):
            return exc
    return flat[0]


# --------------------------------------------------------------------------- the run


async def run_async(
    options: RunOptions,
    ctx: RunContext | None = None,
    *,
    status: StatusHook | None = None,
    agent: Agent | None = None,
) -> Outcome:
    """The whole run; returns the Outcome of a clean end, raises the error of any other.

    ``status`` is the status server (issue 7): started as the task ``status`` once the
    VMM is being started, given the :class:`RunContext`, cancelled at the end. ``agent``
    is the netlink child if the caller already started it (the CLI does, first thing).
    """
    ctx = ctx or RunContext(options)
    # First, so its interpreter start and pyroute2 import overlap the spec load (callers
    # with threads, tests, get a fresh interpreter: a threaded process must not fork).
    agent = agent or Agent.spawn()
    try:
        return await _run(ctx, options, agent, status)
    finally:
        await agent.close()


async def _run(
    ctx: RunContext, options: RunOptions, agent: Agent, status: StatusHook | None
) -> Outcome:
    spec = load(options.spec_path)
    ctx.spec = spec
    logs.set_context(vm=f"{spec.namespace}/{spec.name}")
    kind = choose_hypervisor(spec, options.hypervisor)
    log.info(
        "spec loaded",
        extra={
            "event": "spec-loaded",
            "hypervisor": kind,
            "grace_s": spec.termination_grace_period_s,
        },
    )
    # Every file the spec names must be there before the pod netns is touched.
    volumes = resolve(spec, VolumeLayout(options.volumes_dir, options.state_dir))
    require_present(volumes)
    on_serial, console = _serial_sink(options)
    loop = asyncio.get_running_loop()
    stop_early: list[str] = []

    def early_stop(name: str) -> None:
        if ctx.supervisor is not None:
            ctx.supervisor.request_stop(name)
        else:
            stop_early.append(name)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, early_stop, sig.name)
    try:
        options.state_dir.mkdir(parents=True, exist_ok=True)
        ctx.set_phase("network")
        try:
            # The accelerator probe (QEMU) goes on while the network is set up.
            async with asyncio.TaskGroup() as startup:
                accel = startup.create_task(_choose_accel(kind, options), name="accel-probe")
                network = startup.create_task(
                    _network(ctx, spec, volumes, agent, kind), name="network"
                )
        except BaseExceptionGroup as group_error:
            raise _first_error(group_error) from None
        planned, machine = network.result()
        agent.release()  # the child exits now; collected at the end (run_async)
        ctx.set_phase("dhcp")
        hypervisor = _make_hypervisor(kind, options, on_serial, accel.result())
        ctx.hypervisor = hypervisor
        supervisor = Supervisor(
            hypervisor,
            grace_s=float(spec.termination_grace_period_s),
            on_phase=lambda phase: _mirror_phase(ctx, phase),
        )
        ctx.supervisor = supervisor
        for name in stop_early:
            supervisor.request_stop(name)
        return await _supervise(ctx, supervisor, machine, planned, status=status, agent=agent)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        ctx.set_phase("cleanup")
        if ctx.plan is not None:
            try:
                # hot plug keeps ctx.plan current: plugged NICs are cleaned up too
                await asyncio.to_thread(
                    call_once, "cleanup", ctx.plan, options.state_dir, timeout=CLEANUP_TIMEOUT_S
                )
            except (LauncherError, OSError) as err:
                log.error("network cleanup failed: %s", err)
        if console is not None:
            console.close()


async def _network(
    ctx: RunContext, spec: VmSpec, volumes: ResolvedVolumes, agent: Agent, kind: str
) -> tuple[NetworkPlan, MachineConfig]:
    """discover (child) → plan → machine → apply (child); sets ``ctx.plan`` once applied.

    While the child applies, a thread imports the hypervisor adapter (this process only
    waits then; earlier, the thread would take the GIL from planning).
    """
    options = ctx.options
    name = options.pod_interface
    if not 0 < len(name) <= IFNAMSIZ or "/" in name or any(c.isspace() for c in name):
        raise UsageError(f"--pod-interface {name!r} is not a Linux interface name")
    pod: PodState = await agent.call("discover", None, options.state_dir)
    if not any(link.name == options.pod_interface for link in pod.links):
        raise NetworkError(
            f"pod interface {options.pod_interface!r} does not exist in this network "
            f"namespace (found: {', '.join(lk.name for lk in pod.links) or 'none'})"
        )
    podinfo = load_podinfo(options.podinfo)
    planned = plan_network(
        spec,
        pod,
        PlanOptions(
            status_port=options.status_port,
            podinfo=podinfo,
            pod_interface=options.pod_interface,
        ),
    )
    if any(d.file.state is FileState.BUILD for d in volumes.disks):
        # cloud-init seed ISOs need the plan (guest MACs, SR-IOV/vDPA addresses)
        from launcher.cloudinit import build_seeds  # noqa: PLC0415 - only with cloud-init

        volumes = build_seeds(spec, planned, prepare(volumes))
    else:
        volumes = prepare(volumes)
    machine = build_machine(spec, planned, volumes)
    if options.hotplug_ports is not None:
        machine = dataclasses.replace(machine, hotplug_ports=options.hotplug_ports)
    ctx.machine = machine
    if machine.vfio:
        raise_memlock()
    await agent.send("apply", planned, options.state_dir)
    preload = asyncio.create_task(asyncio.to_thread(_preload, kind), name="preload")
    try:
        result = await agent.receive("apply")
    finally:
        await preload  # a thread cannot be cancelled: let the imports finish
    ctx.plan = planned
    log.info("network applied", extra={"event": "network-applied", "changes": result.changes})
    return planned, machine


def _preload(kind: str) -> None:
    """Import the hypervisor adapter (in a thread while the netlink child applies).

    cloud-hypervisor's client imports aiohttp: here first, without ``ssl`` (launcher.notls).
    """
    if kind == "qemu":
        importlib.import_module("hypervisor.qemu")
        return
    with without_ssl():
        importlib.import_module("hypervisor.cloud_hypervisor")


async def _supervise(
    ctx: RunContext,
    supervisor: Supervisor,
    machine: MachineConfig,
    plan: NetworkPlan,
    *,
    status: StatusHook | None,
    agent: Agent,
) -> Outcome:
    options = ctx.options
    reap = options.reap if options.reap is not None else os.getpid() == 1
    try:
        async with asyncio.TaskGroup() as group:
            servers: list[asyncio.Task[None]] = []
            if reap:
                servers.append(group.create_task(ChildReaper().run(), name="reaper"))
            # the start-up netlink child is exiting (released after apply): collect it
            group.create_task(agent.close(), name="netlink-child-exit")
            ctx.set_phase("hypervisor")
            supervised = group.create_task(supervisor.run(machine), name="supervisor")
            # The DHCP/RA servers open while the VMM starts: their modules are imported in
            # a thread, so the spawn is not kept waiting; they listen tens of ms after the
            # spawn, long before QEMU (~80 ms to run) or any guest kernel can send DHCP.
            await asyncio.to_thread(_import_dhcp)
            await _start_dhcp(ctx, group, plan, servers)
            if ctx.spec is not None and ctx.hypervisor is not None:
                from launcher.hotplug.manager import Manager as HotplugManager  # noqa: PLC0415
                from launcher.hotplug.manager import PodPlumbing  # noqa: PLC0415

                ctx.hotplug = HotplugManager(
                    ctx.spec,
                    plan,
                    ctx.hypervisor,
                    PodPlumbing(
                        options.state_dir,
                        plan_options=PlanOptions(
                            status_port=options.status_port, pod_interface=options.pod_interface
                        ),
                        isolated=True,  # netlink work in a child: no pyroute2 in this process
                    ),
                    spec_path=options.spec_path,
                    podinfo_dir=options.podinfo,
                    state_dir=options.state_dir,
                    context=ctx,
                    pod_interface=options.pod_interface,
                )
                servers.append(group.create_task(ctx.hotplug.run(), name="hotplug"))
            if status is not None:
                servers.append(group.create_task(status(ctx), name="status"))
            outcome = await supervised
            ctx.set_phase("stopping")
            for task in servers:
                task.cancel()
    except BaseExceptionGroup as group_error:
        raise _first_error(group_error) from None
    return outcome


def _import_dhcp() -> None:
    for name in ("dhcp.v4.server", "dhcp.v6.server", "dhcp.ra"):
        importlib.import_module(name)


async def _start_dhcp(
    ctx: RunContext, group: asyncio.TaskGroup, plan: NetworkPlan, servers: list[asyncio.Task[None]]
) -> None:
    """Open every planned DHCPv4/DHCPv6/RA server and run each as a task of ``group``."""
    state_dir = ctx.options.state_dir
    for nic in plan.nics:
        d4, d6, ra = dhcp_servers(nic, state_dir)
        if d4 is not None:
            what = f"DHCPv4 server on {d4.config.interface}"
            await _open(what, d4.start())
            ctx.dhcp4.append(d4)
            servers.append(group.create_task(_serve(what, d4.run()), name=f"dhcp4-{nic.name}"))
        if d6 is not None:
            what = f"DHCPv6 server on {d6.config.interface}"
            await _open(what, d6.open())
            ctx.dhcp6.append(d6)
            servers.append(group.create_task(_serve(what, d6.run()), name=f"dhcp6-{nic.name}"))
        if ra is not None:
            ctx.ra.append(ra)
            what = f"router advertisements on {ra.config.interface}"
            servers.append(group.create_task(_serve(what, ra.run()), name=f"ra-{nic.name}"))


def _mirror_phase(ctx: RunContext, phase: str) -> None:
    if phase in ("running", "stopping"):
        ctx.set_phase(phase)


async def _open(what: str, opening: Awaitable[None]) -> None:
    from dhcp.errors import DhcpError  # noqa: PLC0415 - see top

    try:
        async with asyncio.timeout(10.0):
            await opening
    except (DhcpError, OSError, TimeoutError) as err:
        raise NetworkError(f"{what} could not start: {err or 'timed out'}") from err


def run(
    options: RunOptions, *, status: StatusHook | None = None, agent: Agent | None = None
) -> int:
    """``virt-launcher run``: the exit code of the run (0 on a clean end).

    Writes the termination log for every end; an error is re-raised after that, so the
    CLI reports it in its one place (one ERROR line) and returns its exit code.
    """
    ctx = RunContext(options)
    try:
        outcome = asyncio.run(run_async(options, ctx, status=status, agent=agent))
    except (LauncherError, HypervisorError) as err:
        ctx.exit_code, ctx.cause = err.exit_code, str(err)
        write_termination_log(options.termination_log, str(err))
        raise
    except Exception as err:
        ctx.exit_code, ctx.cause = exit_code_for(err), f"{type(err).__name__}: {err}"
        write_termination_log(options.termination_log, f"unexpected error: {ctx.cause}")
        raise
    ctx.exit_code, ctx.cause = EXIT_OK, outcome.cause
    ctx.set_phase("exited")
    log.info("exit 0: %s", outcome.cause, extra={"event": "exit", "exit_code": EXIT_OK})
    write_termination_log(options.termination_log, outcome.cause)
    return EXIT_OK

"""``virt-launcher run``: the composition root: spec in, VM on the pod network, exit code out.

Called by :func:`launcher.cli.run` with :class:`~launcher.options.RunOptions`. The
sequence (docs/run.md, docs/architecture.md):

1. load the spec (``launcher.spec.load``; invalid → exit 2) and resolve the files it
   names (kernel, disks under ``--volumes-dir``; missing → exit 2) and the VMM binary
   (a missing cloud-hypervisor → exit 4), before the pod is touched;
2. discover the pod (the netlink child sent ``discover`` ahead), compose the network
   plan and the machine (:func:`launcher.machine.compose`, the one composition), check
   the capabilities the plan needs (:mod:`launcher.privileges`; missing → exit 3, nothing
   changed) and wire each guest NIC through its owner (:class:`launcher.nics.Nics`;
   every privileged change through the one :class:`~launcher.agent.AgentRunner`), with
   QEMU's accelerator probe running beside it (failure → exit 3);
3. start the VMM through :class:`~launcher.supervisor.Supervisor` (failure → exit 4)
   and, meanwhile, open every NIC's DHCPv4, DHCPv6 and RA servers (listening tens of ms
   after the spawn, before QEMU runs);
4. serve: the hot-plug manager, the link refresh and the status task run beside the
   supervisor;
5. wait: the VMM's exit or SIGTERM/SIGINT (power button → grace period → hard stop,
   exit 0 or 5);
6. shut down: every task cancelled, every NIC's servers closed (the RA server sends its
   final advert) and its plumbing removed (``Nics`` exits), the termination log written.

Every long-lived task (DHCP/RA servers, the supervisor, the PID-1 reaper, hot plug, the
status server) is a named task of ONE ``asyncio.TaskGroup``; a task that fails ends the
run with its error and that error's exit code. The run TELLS the status board
(:class:`~launcher.status.model.StatusBoard`) each change; nothing polls.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import os
import shutil
import sys
import threading
import time
import warnings
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

from hypervisor.base import RunAs, serial_to_stdout
from launcher import logs, signals
from launcher.agent import Agent, AgentRunner
from launcher.errors import (
    EXIT_OK,
    EXPECTED_ERRORS,
    HypervisorError,
    LauncherError,
    NetworkError,
    UsageError,
    exit_code_for,
)
from launcher.machine import (
    CLOUD_HYPERVISOR,
    Composition,
    check_for_hypervisor,
    choose_hypervisor,
    compose,
)
from launcher.network.brnf import hairpin_blockers
from launcher.nics import NicEvent, Nics
from launcher.options import RunOptions
from launcher.phase import Phase
from launcher.podinfo import load_podinfo
from launcher.privileges import block_volumes, check_capabilities
from launcher.privsep import caps, vmm
from launcher.privsep.helper import Helper
from launcher.privsep.vmm import hand_over, parse_user
from launcher.spec import VmSpec, load
from launcher.spec.model import BindingKind
from launcher.startup import import_servers, preload_hypervisor, start_up_done, without_ssl
from launcher.status.model import StatusBoard
from launcher.supervisor import (
    ChildReaper,
    Outcome,
    Supervisor,
    raise_memlock,
    raise_nofile,
    write_termination_log,
)
from launcher.volumes import (
    FileState,
    ResolvedVolumes,
    VolumeLayout,
    prepare,
    require_present,
    resolve,
)

if TYPE_CHECKING:  # imported when first used: they are not on the way to the VMM spawn
    from hypervisor.base import Hypervisor
    from hypervisor.qemu import AccelChoice
    from launcher.network import PodState

__all__ = ["run", "run_async", "StatusTask", "SERIAL_PREFIX"]

log = logging.getLogger(__name__)

SERIAL_PREFIX = "serial: "

#: The status endpoint's task: given the run's board, serves until cancelled.
StatusTask = Callable[[StatusBoard], Coroutine[Any, Any, None]]


# --------------------------------------------------------------------------- pieces


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
    # the adapter's imports (≈9 ms) in a thread: the loop stays free for discover's answer
    choose_accel = await asyncio.to_thread(_import_choose_accel)
    return await choose_accel(
        options.accel, binary=options.qemu_binary, cache_dir=options.state_dir
    )


def _import_choose_accel() -> Callable[..., Awaitable[AccelChoice]]:
    from hypervisor.qemu import choose_accel  # noqa: PLC0415 - startup: adapter in a thread

    return choose_accel


def _make_hypervisor(
    kind: str,
    options: RunOptions,
    on_serial: Callable[[str], None],
    accel: AccelChoice | None,
    vmm: _VmmAccess,
) -> Hypervisor:
    run_dir = options.state_dir / kind
    if kind == "qemu":
        from hypervisor.qemu import Qemu  # noqa: PLC0415 - startup: adapter in a thread

        if accel is None:
            raise HypervisorError("no QEMU accelerator was chosen")
        return Qemu(
            accel=accel.accel,
            binary=options.qemu_binary,
            run_dir=str(run_dir),
            on_serial=on_serial,
            tap_fds=vmm.taps,
            run_as=vmm.run_as,
        )
    from hypervisor.cloud_hypervisor import CloudHypervisor  # noqa: PLC0415 - the same

    run_dir.mkdir(parents=True, exist_ok=True)
    return CloudHypervisor(
        binary=options.cloud_hypervisor_binary,
        api_socket=str(run_dir / "api.sock"),
        on_serial=on_serial,
        tap_opener=vmm.take_tap,
        run_as=vmm.run_as,
    )


def _require_vmm(kind: str, options: RunOptions) -> None:
    """cloud-hypervisor has no Debian package, so an image may lack it (docs/image.md): its
    absence is exit 4, naming it and ``--hypervisor qemu``, before the pod is touched."""
    if kind == CLOUD_HYPERVISOR and shutil.which(options.cloud_hypervisor_binary) is None:
        with without_ssl():  # the package imports aiohttp (launcher.startup.preload_hypervisor)
            from hypervisor.cloud_hypervisor.process import require_binary  # noqa: PLC0415 - startup

        require_binary(options.cloud_hypervisor_binary)


@dataclass(slots=True)
class _VmmAccess:
    """What the VMM gets instead of privileges: the user it runs as and its taps opened
    by the launcher beforehand (one fd per queue pair; the launcher's copies are closed
    once the VMM has them)."""

    run_as: RunAs | None
    taps: dict[str, list[int]]  # NIC device id -> fds
    by_tap: dict[str, str]  # tap name -> NIC device id

    def take_tap(self, name: str, queues: int) -> list[int]:
        """cloud-hypervisor's tap opener: the fds opened before the spawn (it closes them)."""
        fds = self.taps.pop(self.by_tap.get(name, ""), None)
        if fds is None or len(fds) != queues:
            raise HypervisorError(f"tap {name!r} with {queues} queue(s) was not opened")
        return fds

    def close(self) -> None:
        """Close the launcher's copies of the tap fds."""
        taps, self.taps = self.taps, {}
        for fds in taps.values():
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)


async def _vmm_access(
    composition: Composition, options: RunOptions, runner: AgentRunner, accel: AccelChoice | None
) -> _VmmAccess:
    """The VMM's user (its files handed over: :func:`launcher.privsep.vmm.hand_over`) and
    its taps, opened while this process still holds its capabilities."""
    user = parse_user(options.vmm_user)
    run_as = None
    if user is not None:
        run_dir = options.state_dir / composition.hypervisor
        kvm = accel is not None and accel.accel == "kvm"
        run_as = hand_over(user, composition.machine, run_dir, kvm=kvm)
        # Signals to the VMM (another user) go through the helper once this process has
        # no CAP_KILL; the supervisor's and the liveness check's too.
        run_as = dataclasses.replace(run_as, signal=runner.request_signal)
        vmm.set_signaller(runner.request_signal)
    access = _VmmAccess(run_as, {}, {})
    try:
        for dev in composition.machine.nets:
            access.taps[dev.id] = await runner.open_tap(dev.tap, dev.queues)
            access.by_tap[dev.tap] = dev.id
    except BaseException:
        access.close()
        raise
    return access


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error that ended the run: an expected error first, else the first exception."""
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


def _nic_event(board: StatusBoard) -> Callable[[NicEvent], None]:
    def tell(ev: NicEvent) -> None:
        board.event(f"nic-{ev.kind}", ev.message, iface=ev.nic)

    return tell


@dataclass(slots=True)
class _Boot:
    """What start-up made: the composition and the files the machine uses."""

    composition: Composition
    volumes: ResolvedVolumes


# --------------------------------------------------------------------------- the run


async def run_async(
    options: RunOptions,
    board: StatusBoard | None = None,
    *,
    status: StatusTask | None = None,
    agent: Agent | None = None,
    helper: Helper | None = None,
) -> Outcome:
    """The whole run; returns the Outcome of a clean end, raises the error of any other.

    ``status`` is the status endpoint's task, started once the VMM is being started and
    cancelled at the end. ``agent`` is the netlink child and ``helper`` the privileged
    helper if the caller already started them (the console script forks both first).
    """
    board = board or StatusBoard()
    _pidfd_child_watcher()
    # First, so its interpreter start and pyroute2 import overlap the spec load (callers
    # with threads, tests, get a fresh interpreter: a threaded process must not fork).
    agent = agent or Agent.spawn()
    try:
        helper = helper or Helper.spawn()
    except BaseException:
        await agent.close()
        raise
    board.set_helper(helper.pid)
    try:
        return await _Run(board, options, agent, status, helper)()
    finally:
        await agent.close()
        await helper.close()


#: Looks at /proc/self/task after the drop for exiting threads (20 ms apart, ≤ 0.5 s).
_CAPS_RECHECKS = 25


def _pidfd_child_watcher() -> None:
    """Python 3.11's default child watcher waits for each child in a thread made at the
    spawn: that thread would keep the start-up capabilities for the VMM's whole life. A
    pidfd watcher waits on the event loop instead (the default from Python 3.12 on)."""
    if sys.version_info >= (3, 12):
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        watcher = asyncio.PidfdChildWatcher()
        watcher.attach_loop(asyncio.get_running_loop())
        asyncio.set_child_watcher(watcher)


class _Run:
    """One run's state while it starts, serves and ends (see the module docstring)."""

    def __init__(
        self,
        board: StatusBoard,
        options: RunOptions,
        agent: Agent,
        status: StatusTask | None,
        helper: Helper | None = None,
    ) -> None:
        self.board = board
        self.options = options
        self.status = status
        self.runner = AgentRunner(options.state_dir, agent, helper=helper)
        self.vmm: _VmmAccess | None = None
        self._vm_up = asyncio.Event()  # the VMM runs (or has stopped already)
        # The loop's worker threads, ours so they can be replaced when capabilities go.
        self.pool = concurrent.futures.ThreadPoolExecutor()
        asyncio.get_running_loop().set_default_executor(self.pool)
        self.nics = Nics(self.runner, state_dir=options.state_dir, on_event=_nic_event(board))
        self.supervisor: Supervisor | None = None
        self._stop_early: list[str] = []

    def request_stop(self, name: str) -> None:
        """SIGTERM/SIGINT: to the supervisor, or kept until there is one."""
        if self.supervisor is not None:
            self.supervisor.request_stop(name)
            return
        if not self._stop_early:
            log.info(
                "stop requested: %s, before the VM started (the current start-up step ends first)",
                name,
                extra={"event": "stop-requested"},
            )
        self._stop_early.append(name)

    async def __call__(self) -> Outcome:
        loop = asyncio.get_running_loop()
        for sig in signals.STOP_SIGNALS:
            loop.add_signal_handler(sig, self.request_stop, sig.name)
        for name in signals.take():  # came before the loop handled them (launcher.signals)
            self.request_stop(name)
        try:
            return await self._run()
        finally:
            for sig in signals.STOP_SIGNALS:
                loop.remove_signal_handler(sig)
            signals.hold()  # from here to the exit a signal is recorded, never fatal

    async def _run(self) -> Outcome:
        options, board = self.options, self.board
        options.check()
        spec = load(options.spec_path)
        board.set_spec(spec)
        logs.set_context(vm=f"{spec.namespace}/{spec.name}")
        log.info(
            "spec loaded",
            extra={
                "event": "spec-loaded",
                "hypervisor": choose_hypervisor(spec, options.hypervisor),
                "grace_s": spec.termination_grace_period_s,
            },
        )
        # Every file the spec names must be there before the pod netns is touched.
        volumes = resolve(spec, VolumeLayout(options.volumes_dir, options.state_dir))
        require_present(volumes)
        if self._stop_early:  # nothing was touched yet: end here
            return Outcome(f"stopped by {self._stop_early[0]} before the VM started", None, True)
        _require_vmm(choose_hypervisor(spec, options.hypervisor), options)
        on_serial, console = _serial_sink(options)
        try:
            options.state_dir.mkdir(parents=True, exist_ok=True)
            async with self.nics:
                board.set_servers(self.nics.servers)
                try:
                    boot, accel = await self._start_network(spec, volumes)
                    child = self.runner.release()  # the start-up child exits now
                    _phase(board, Phase.DHCP)
                    kind = boot.composition.hypervisor
                    self.vmm = await _vmm_access(boot.composition, options, self.runner, accel)
                    hypervisor = _make_hypervisor(kind, options, on_serial, accel, self.vmm)
                    self.supervisor = Supervisor(
                        hypervisor,
                        grace_s=float(spec.termination_grace_period_s),
                        on_phase=self._on_phase,
                    )
                    for name in self._stop_early:
                        self.supervisor.request_stop(name)
                    board.set_hypervisor(hypervisor)
                    return await self._supervise(spec, boot, child)
                finally:
                    _phase(board, Phase.CLEANUP)
        finally:
            if self.vmm is not None:
                self.vmm.close()
            if console is not None:
                console.close()

    def _on_phase(self, phase: Phase) -> None:
        _supervisor_phase(self.board, phase)
        if phase in (Phase.RUNNING, Phase.STOPPING, Phase.EXITED):
            self._vm_up.set()

    async def _start_network(
        self, spec: VmSpec, volumes: ResolvedVolumes
    ) -> tuple[_Boot, AccelChoice | None]:
        """discover → compose → wire every NIC, with QEMU's accelerator probe beside it."""
        _phase(self.board, Phase.NETWORK)
        kind = choose_hypervisor(spec, self.options.hypervisor)
        check_for_hypervisor(  # exit 2 before the pod is touched, as validate says
            spec, kind, qemu_binary=self.options.qemu_binary, cache_dir=self.options.state_dir
        )
        try:
            async with asyncio.TaskGroup() as startup:
                accel = startup.create_task(_choose_accel(kind, self.options), name="accel-probe")
                boot = startup.create_task(self._network(spec, volumes), name="network")
        except BaseExceptionGroup as group_error:
            raise _first_error(group_error) from None
        return boot.result(), accel.result()

    async def _network(self, spec: VmSpec, volumes: ResolvedVolumes) -> _Boot:
        """discover (child) → compose → NIC owners wire the pod (child); the boot NICs'
        servers open later (:meth:`Nics.serve_all`, after the spawn).

        While the child applies, a thread imports the hypervisor adapter (this process
        only waits then; earlier, the thread would take the GIL from planning).
        """
        options, board = self.options, self.board
        pod: PodState = await self.runner.discover()
        if not any(link.name == options.pod_interface for link in pod.links):
            raise NetworkError(
                f"pod interface {options.pod_interface!r} does not exist in this network "
                f"namespace (found: {', '.join(lk.name for lk in pod.links) or 'none'})"
            )
        composition = compose(spec, pod, options, load_podinfo(options.podinfo), volumes)
        check_capabilities(  # before anything changes (the network, the volumes' files)
            spec, composition.network, vmm_user=options.vmm_user, block=block_volumes(volumes)
        )
        if any(d.file.state is FileState.BUILD for d in volumes.disks):
            # cloud-init seed ISOs need the plan (guest MACs, SR-IOV/vDPA addresses)
            from launcher.cloudinit import build_seeds  # noqa: PLC0415 - startup: cloud-init

            volumes = build_seeds(spec, composition.network, prepare(volumes))
        else:
            volumes = prepare(volumes)
        if composition.machine.vfio:
            raise_memlock()
        board.set_plan(composition.network)
        preload = asyncio.create_task(
            asyncio.to_thread(preload_hypervisor, composition.hypervisor), name="preload"
        )
        try:
            for nic in composition.network.nics:
                await self.nics.add(nic, serve=False, critical=True)
        finally:
            await preload  # a thread cannot be cancelled: let the imports finish
        wired = ", ".join(n.name for n in composition.network.nics) or "no NICs"
        board.network_applied(f"pod network wired for {wired}")
        log.info("network applied", extra={"event": "network-applied", "nics": wired})
        _warn_hairpin(composition)
        return _Boot(composition, volumes)

    async def _supervise(self, spec: VmSpec, boot: _Boot, child: Agent | None) -> Outcome:
        options, board, nics, supervisor = self.options, self.board, self.nics, self.supervisor
        assert supervisor is not None
        reap = options.reap if options.reap is not None else os.getpid() == 1
        try:
            async with asyncio.TaskGroup() as group:
                nics.bind(lambda coro, name: group.create_task(coro, name=name))
                others: list[asyncio.Task[None]] = []
                if reap:
                    others.append(group.create_task(ChildReaper().run(), name="reaper"))
                if child is not None:  # the released start-up netlink child: collect it
                    group.create_task(child.close(), name="netlink-child-exit")
                _phase(board, Phase.HYPERVISOR)
                supervised = group.create_task(
                    supervisor.run(boot.composition.machine), name="supervisor"
                )
                # The DHCP/RA servers open while the VMM starts: their modules are imported
                # in a thread, so the spawn is not kept waiting; they listen tens of ms after
                # the spawn, long before QEMU (~80 ms to run) or a guest kernel asks.
                await asyncio.to_thread(import_servers)
                if not supervised.done():  # else it ended at once (a stop before the start)
                    await self._serve(spec, boot, group, others, supervised)
                outcome = await supervised
                _phase(board, Phase.STOPPING, outcome.cause)
                for task in others:
                    task.cancel()
                await nics.stop_serving()
        except BaseExceptionGroup as group_error:
            raise _first_error(group_error) from None
        return outcome

    async def _serve(
        self,
        spec: VmSpec,
        boot: _Boot,
        group: asyncio.TaskGroup,
        others: list[asyncio.Task[None]],
        supervised: asyncio.Task[Outcome],
    ) -> None:
        """The boot NICs' servers, the capability drop, then the hot-plug manager, the link
        refresh and the status task."""
        options, board, nics, supervisor = self.options, self.board, self.nics, self.supervisor
        assert supervisor is not None
        await nics.serve_all()
        serving = sum(len(o.servers) for o in nics)
        board.dhcp_serving(f"{serving} DHCP/RA server(s) listening")
        await self._drop_privileges(supervisor, supervised)
        from launcher.hotplug.manager import Manager  # noqa: PLC0415 - startup: hot plug

        manager = Manager(
            spec,
            boot.composition.network,
            supervisor.hypervisor,
            nics,
            options=options,
            board=board,
        )
        others.append(group.create_task(manager.run(), name="hotplug"))
        from launcher.hotplug.refresh import watch  # noqa: PLC0415 - startup: hot plug

        # The link refresh: pod address changes, from rtnetlink (docs/network.md).
        refresh = watch(manager.pod_indexes, manager.follow_pod_addresses)
        others.append(group.create_task(refresh, name="link-refresh"))
        if self.status is not None:
            others.append(group.create_task(self.status(board), name="status"))
        start_up_done()

    async def _drop_privileges(
        self, supervisor: Supervisor, supervised: asyncio.Task[Outcome]
    ) -> None:
        """Once the VMM runs (it has its taps, its user, its files) and every server socket
        is open: no capability is left in any thread of this process, and nothing it
        executes can gain one (docs/privileges.md). Later privileged work goes through
        the helper (the runner)."""
        waiter = asyncio.create_task(self._vm_up.wait(), name="wait-vmm-running")
        try:
            await asyncio.wait({waiter, supervised}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if self.vmm is not None:
            self.vmm.close()  # the VMM holds its own copies of the taps now
        if self.options.keep_privileges:
            return
        caps.set_no_new_privs()
        caps.drop_all()
        # Capabilities are per thread: the worker threads made so far (they hold them) are
        # replaced by a fresh pool whose threads, made from now on, inherit none.
        old, self.pool = self.pool, concurrent.futures.ThreadPoolExecutor()
        asyncio.get_running_loop().set_default_executor(self.pool)
        await asyncio.to_thread(old.shutdown, True)
        self.runner.drop_privileges()
        self.board.set_link_opener(self.runner.open_link)  # the doctor's probes
        left = caps.threads_with_caps()
        # A worker joined by the shutdown above can still be listed for a moment while
        # the kernel tears it down (it is no Python thread any more): look again, bounded.
        for _ in range(_CAPS_RECHECKS):
            if not left:
                break
            await asyncio.sleep(0.02)
            left = caps.threads_with_caps()
        if left:
            names = {t.native_id: t.name for t in threading.enumerate()}
            held = ", ".join(f"{tid} ({names.get(tid, 'not a Python thread')})" for tid in left)
            log.error("threads still hold capabilities: %s", held, extra={"event": "caps-left"})
        log.info(
            "capabilities dropped",
            extra={
                "event": "privileges-dropped",
                "helper": None if self.runner.helper is None else self.runner.helper.pid,
            },
        )
        self.board.event("privileges-dropped", "the launcher holds no capability")


def _phase(board: StatusBoard, phase: Phase, cause: str | None = None) -> None:
    """The run moved to ``phase``: logged once per change (``event: phase``) and told to
    the status board."""
    if phase is not board.phase:
        log.info("phase %s", phase, extra={"event": "phase", "phase": str(phase)})
    board.set_phase(phase, cause)


def _warn_hairpin(composition: Composition) -> None:
    """Masquerade hairpin cannot work while br_netfilter is active in the pod: say so
    once, naming the pod sysctls that fix it (docs/network.md "Hairpin")."""
    if not any(n.binding is BindingKind.MASQUERADE for n in composition.network.nics):
        return
    blockers = hairpin_blockers()
    if blockers:
        log.warning(
            "br_netfilter is active in this pod (%s = 1): the guest cannot reach its own "
            "forwarded ports through the pod IP (hairpin); set these pod sysctls to 0",
            ", ".join(blockers),
            extra={"event": "hairpin-blocked", "sysctls": blockers},
        )


def _supervisor_phase(board: StatusBoard, phase: Phase) -> None:
    if phase in (Phase.RUNNING, Phase.STOPPING):
        _phase(board, phase)
    board.hypervisor_state()


def run(
    options: RunOptions,
    *,
    status: StatusTask | None = None,
    agent: Agent | None = None,
    helper: Helper | None = None,
) -> int:
    """``virt-launcher run``: the exit code of the run (0 on a clean end).

    Writes the termination log for every end; an error is re-raised after that, so the
    CLI reports it in its one place (one ERROR line) and returns its exit code.
    """
    board = StatusBoard(started_at=time.time())
    raise_nofile()  # room for the status endpoint's connection cap (docs/status.md)
    try:
        outcome = asyncio.run(run_async(options, board, status=status, agent=agent, helper=helper))
    except (LauncherError, HypervisorError) as err:
        write_termination_log(options.termination_log, str(err))
        raise
    except Exception as err:
        cause = f"{type(err).__name__}: {err}"
        log.debug("exit %d: %s", exit_code_for(err), cause)
        write_termination_log(options.termination_log, f"unexpected error: {cause}")
        raise
    finally:
        late = signals.take()
        if late:
            log.info(
                "%s while exiting: the launcher was already ending",
                ", ".join(late),
                extra={"event": "signal-while-exiting"},
            )
    _phase(board, Phase.EXITED, outcome.cause)
    log.info("exit 0: %s", outcome.cause, extra={"event": "exit", "exit_code": EXIT_OK})
    write_termination_log(options.termination_log, outcome.cause)
    return EXIT_OK

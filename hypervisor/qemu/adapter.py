"""The QEMU implementation of the :class:`~hypervisor.base.Hypervisor` protocol.

:class:`Qemu` spawns ``qemu-system-x86_64`` with the argv of
:func:`hypervisor.qemu.argv.build_argv` (asyncio subprocess; stdout is the guest serial
console, stderr is kept as a tail for error messages), drives it over QMP
(:mod:`hypervisor.qemu.qmp`) and turns QMP events into
:class:`~hypervisor.base.LifecycleEvent` values and :class:`VmState` transitions. The
composition root creates one per VM (after :func:`hypervisor.qemu.probe.choose_accel`)
and the supervisor calls it only through the protocol.

QMP events and what they mean here:

=================  =================  ===============================================
QMP event          LifecycleEvent     state
=================  =================  ===============================================
SHUTDOWN           ``shutdown``       Shutdown (QEMU exits right after)
RESET              ``reboot``         unchanged
STOP               ``paused``         Paused
RESUME             ``resumed``        Running
GUEST_PANICKED     ``panic``          Failed
DEVICE_DELETED     ``device-removed`` unchanged
=================  =================  ===============================================

A STOP whose ``query-status`` says ``internal-error`` (a KVM emulation failure: QEMU stops
the vCPUs and waits forever) becomes ``internal-error`` and Failed instead of ``paused``.

The process exit is noticed at once (a task awaits ``Process.wait()``, no polling), and
:meth:`Qemu.wait` returns an :class:`~hypervisor.base.ExitInfo` whose cause says what
happened: ``guest powered off``, ``stopped by the launcher``, ``guest panicked``,
``qemu was killed by SIGKILL`` or ``qemu exited with code 1: <last stderr line>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import tempfile
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hypervisor.base import (
    ExitInfo,
    LifecycleEvent,
    RunAs,
    advance,
    require,
    serial_to_stdout,
    signal_vmm,
)
from hypervisor.errors import HypervisorError
from hypervisor.machine import MachineConfig, NetDevice, VdpaDevice, VfioDevice, VmState
from hypervisor.qemu.argv import QemuRuntime, build_argv, netdev_id
from hypervisor.qemu.devices import NIC_MODELS
from hypervisor.qemu.qmp import QmpEvent, QmpSession

__all__ = ["Qemu", "serial_to_stdout", "describe_exit", "map_event"]

log = logging.getLogger(__name__)
serial_log = logging.getLogger("hypervisor.qemu.serial")

_STDERR_LINES = 20
_SERIAL_HISTORY = 2000
_EVENTS: Mapping[str, tuple[str, VmState | None]] = {
    "SHUTDOWN": ("shutdown", VmState.SHUTDOWN),
    "RESET": ("reboot", None),
    "STOP": ("paused", VmState.PAUSED),
    "RESUME": ("resumed", VmState.RUNNING),
    "GUEST_PANICKED": ("panic", VmState.FAILED),
    "DEVICE_DELETED": ("device-removed", None),
}


def map_event(event: QmpEvent) -> LifecycleEvent | None:
    """The lifecycle event for a QMP event, or None for events the launcher ignores."""
    known = _EVENTS.get(event.name)
    if known is None:
        return None
    name, state = known
    details = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in event.data.items()}
    if event.name == "DEVICE_DELETED" and "device" not in event.data:
        return None  # a backend (e.g. a netdev's QOM path) was deleted, not a device
    return LifecycleEvent(name, "qmp", event.timestamp, state, details)


def describe_exit(returncode: int, stderr_tail: str, name: str = "qemu") -> str:
    """One sentence for a process exit, with the last stderr line when it failed."""
    if returncode < 0:
        try:
            signame = signal.Signals(-returncode).name
        except ValueError:
            signame = f"signal {-returncode}"
        return f"{name} was killed by {signame}"
    lines = [ln for ln in stderr_tail.splitlines() if ln.strip()]
    if returncode == 0:
        return f"{name} exited with code 0"
    return f"{name} exited with code {returncode}" + (f": {lines[-1]}" if lines else "")


class _History:
    """An append-only, bounded list that any number of async iterators can follow."""

    def __init__(self, maxlen: int | None = None) -> None:
        self._items: deque[Any] = deque(maxlen=maxlen)
        self._total = 0
        self._closed = False
        self._changed = asyncio.Event()

    def append(self, item: Any) -> None:
        self._items.append(item)
        self._total += 1
        self._wake()

    def close(self) -> None:
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def follow(self) -> AsyncIterator[Any]:
        seen = 0
        while True:
            first = self._total - len(self._items)
            seen = max(seen, first)
            while seen < self._total:
                yield self._items[seen - first]
                seen += 1
                first = self._total - len(self._items)
                seen = max(seen, first)
            if self._closed:
                return
            await self._changed.wait()


def _listen_unix(path: Path) -> socket.socket:
    """A unix stream socket listening at ``path`` (for QEMU to accept on)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        sock.listen(4)
    except OSError as err:
        sock.close()
        raise HypervisorError(f"cannot listen on the QMP socket {path}: {err}") from err
    return sock


class Qemu:
    """One VM run by one QEMU process (the ``Hypervisor`` protocol).

    ``accel`` is the chosen accelerator (``kvm``/``tcg``); ``run_dir`` holds the QMP
    socket and pidfile (a fresh temporary directory when None); ``tap_fds`` maps a NIC id
    to tap fds opened by the launcher (passed with ``pass_fds``); ``on_serial`` receives
    every console line (default: logged by ``hypervisor.qemu.serial`` with a ``serial:``
    prefix; :func:`serial_to_stdout` forwards to stdout instead). ``vhost_net`` defaults
    to whether ``/dev/vhost-net`` exists. ``run_as``: the user QEMU runs as (None: this
    process's).
    """

    def __init__(
        self,
        *,
        accel: str = "tcg",
        binary: str = "qemu-system-x86_64",
        run_dir: str | None = None,
        tap_fds: Mapping[str, Sequence[int]] | None = None,
        vhost_net: bool | None = None,
        on_serial: Callable[[str], None] | None = None,
        qmp_timeout: float = 10.0,
        command_timeout: float = 10.0,
        quit_timeout: float = 10.0,
        unplug_timeout: float = 30.0,
        run_as: RunAs | None = None,
    ) -> None:
        self._accel = accel
        self._run_as = run_as
        self._binary = binary
        self._run_dir = run_dir
        self._tap_fds = {k: tuple(v) for k, v in (tap_fds or {}).items()}
        self._vhost_net = os.path.exists("/dev/vhost-net") if vhost_net is None else vhost_net
        self._on_serial = on_serial or (lambda line: serial_log.info("serial: %s", line))
        self._qmp_timeout = qmp_timeout
        self._command_timeout = command_timeout
        self._quit_timeout = quit_timeout
        self._unplug_timeout = unplug_timeout
        self._state = VmState.CREATED
        self._proc: asyncio.subprocess.Process | None = None
        self._qmp: QmpSession | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._exit_task: asyncio.Task[ExitInfo] | None = None
        self._exit_info: ExitInfo | None = None
        self._stderr: deque[str] = deque(maxlen=_STDERR_LINES)
        self._serial = _History(_SERIAL_HISTORY)
        self._events = _History()
        self._shutdown_event: QmpEvent | None = None
        self._panicked = False
        self._internal_error = False
        self._stop_requested = False
        self._config: MachineConfig | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._free_ports: list[str] = []
        self._plugged: dict[str, str] = {}  # device id -> hot-plug port
        self._deleted: dict[str, asyncio.Event] = {}
        self.argv: list[str] = []

    # -- protocol properties -------------------------------------------------------------

    @property
    def kind(self) -> str:
        """Always ``"qemu"``."""
        return "qemu"

    @property
    def state(self) -> VmState:
        """The current lifecycle state."""
        return self._state

    @property
    def pid(self) -> int | None:
        """QEMU's process id once spawned."""
        return self._proc.pid if self._proc is not None else None

    def _set_state(self, new: VmState) -> None:
        old = self._state
        self._state = advance(old, new)
        if old is not new:
            log.info("VM state %s -> %s", old, new, extra={"vm_state": str(new)})

    # -- start ---------------------------------------------------------------------------

    async def start(self, config: MachineConfig) -> None:
        """Spawn QEMU, connect QMP and confirm the guest runs (Created → Running).

        On any failure QEMU is killed, the state becomes Failed and HypervisorError is raised.
        """
        require("start", self._state)
        self._config = config
        if self._run_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="vl-qemu-")
            run_dir = Path(self._tmp.name)
        else:
            run_dir = Path(self._run_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
        qmp_path = run_dir / "qmp.sock"
        with contextlib.suppress(FileNotFoundError):
            qmp_path.unlink()
        # Run as another user, QEMU gets its QMP socket listening already (this process
        # made it, in a directory only this process writes) and writes no pidfile.
        listener = _listen_unix(qmp_path) if self._run_as is not None else None
        runtime = QemuRuntime(
            qmp_socket=str(qmp_path),
            accel=self._accel,
            binary=self._binary,
            pidfile=str(run_dir / "qemu.pid") if listener is None else None,
            vhost_net=self._vhost_net,
            tap_fds=self._tap_fds,
            qmp_fd=None if listener is None else listener.fileno(),
        )
        self.argv = build_argv(config, runtime)
        self._free_ports = [f"hp{i}" for i in range(config.hotplug_ports)]
        fds = [fd for group in self._tap_fds.values() for fd in group]
        if listener is not None:
            fds.append(listener.fileno())
        proc = await self._spawn(fds, listener)
        log.info("qemu started", extra={"pid": proc.pid, "argv": self.argv})
        pid = proc.pid
        self._tasks = [
            asyncio.create_task(self._pump_stderr(), name=f"qemu-stderr-{pid}"),
            asyncio.create_task(self._pump_serial(), name=f"qemu-serial-{pid}"),
        ]
        self._exit_task = asyncio.create_task(self._watch_exit(), name=f"qemu-wait-{pid}")
        try:
            self._qmp = await QmpSession.open(
                str(qmp_path), wait_s=self._qmp_timeout, alive=self._alive
            )
            status = await self._command("query-status")
        except HypervisorError as err:
            await self._kill()
            info = await self.wait()
            if self._state not in (VmState.SHUTDOWN, VmState.FAILED):
                self._set_state(VmState.FAILED)
            raise HypervisorError(f"QEMU did not start: {err} ({info.cause})") from err
        except asyncio.CancelledError:
            await self._kill()
            raise
        self._tasks.append(asyncio.create_task(self._pump_events(), name=f"qemu-events-{pid}"))
        await self._links_then_run(config, status)

    async def _spawn(
        self, fds: list[int], listener: socket.socket | None
    ) -> asyncio.subprocess.Process:
        """Execute QEMU (``self.argv``) with ``fds`` passed, as the VMM user when one is set."""
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                pass_fds=fds,
                user=None if self._run_as is None else self._run_as.uid,
                group=None if self._run_as is None else self._run_as.gid,
                extra_groups=None if self._run_as is None else list(self._run_as.groups),
                # Own session: a Ctrl-C or a terminal's SIGINT reaches only the launcher,
                # which then shuts the guest down with the power button (docs/run.md).
                start_new_session=True,
            )
        except OSError as err:
            self._set_state(VmState.FAILED)
            raise HypervisorError(f"cannot execute QEMU binary {self._binary!r}: {err}") from err
        finally:
            if listener is not None:
                listener.close()  # QEMU has its own copy
        self._proc = proc
        return proc

    async def _links_then_run(self, config: MachineConfig, status: object) -> None:
        """NICs whose link starts down lose their carrier, then the guest runs (QEMU was
        started with ``-S`` then: build_argv); the state follows QEMU's run state."""
        running = str(status.get("status", "")) if isinstance(status, dict) else ""
        down = [dev.id for dev in config.nets if not dev.link_up]
        if down:
            for device_id in down:
                await self._command("set_link", {"name": device_id, "up": False})
            await self._command("cont")
            running = "running"
        self._set_state(VmState.RUNNING if running == "running" else VmState.PAUSED)
        if running not in ("running", "paused"):
            log.warning("QEMU reports run state %r after start", running)

    def _alive(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def _command(self, command: str, arguments: Mapping[str, object] | None = None) -> Any:
        if self._qmp is None:
            raise HypervisorError(f"QMP command {command} needs a started QEMU")
        return await self._qmp.execute(command, arguments, limit_s=self._command_timeout)

    # -- background tasks ----------------------------------------------------------------

    async def _pump_stderr(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        async for raw in self._proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            if line:
                self._stderr.append(line)
                log.debug("qemu stderr: %s", line)

    async def _pump_serial(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        try:
            async for raw in self._proc.stdout:
                line = raw.decode(errors="replace").rstrip("\r\n")
                self._serial.append(line)
                self._on_serial(line)
        finally:
            self._serial.close()

    async def _pump_events(self) -> None:
        assert self._qmp is not None
        async for event in self._qmp.events():
            if event.name == "SHUTDOWN":
                self._shutdown_event = event
            elif event.name == "GUEST_PANICKED":
                self._panicked = True
            elif event.name == "DEVICE_DELETED":
                device = str(event.data.get("device", ""))
                if device in self._deleted:
                    self._deleted[device].set()
            mapped = map_event(event)
            if mapped is None:
                continue
            if event.name == "STOP":
                mapped = await self._explain_stop(mapped)
            log.info("qemu event %s", mapped.name, extra={"event": mapped.name, **mapped.details})
            if mapped.state is not None and mapped.state is not VmState.SHUTDOWN:
                with contextlib.suppress(HypervisorError):
                    self._set_state(mapped.state)
            self._events.append(mapped)

    async def _explain_stop(self, stop: LifecycleEvent) -> LifecycleEvent:
        """Ask why the vCPUs stopped: a KVM internal error (emulation failure) is a failure.

        QEMU reports ``internal-error`` only as a run state after STOP; the VM then sits
        stopped forever, so it becomes Failed here instead of an innocent Paused.
        """
        try:
            status = await self._command("query-status")
        except HypervisorError:
            return stop  # QEMU is going away; the exit decides the state
        run_state = str(status.get("status", "")) if isinstance(status, dict) else ""
        if run_state != "internal-error":
            return stop
        self._internal_error = True
        log.error("the guest stopped with a hypervisor internal error (KVM emulation failure?)")
        details = {**stop.details, "status": run_state}
        return LifecycleEvent(
            "internal-error", stop.source, stop.timestamp, VmState.FAILED, details
        )

    async def _watch_exit(self) -> ExitInfo:
        assert self._proc is not None
        code = await self._proc.wait()
        # Drain the readers (they end at EOF) so the tail and the last events are complete.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._qmp is not None:
            await self._qmp.close()
        for task in self._tasks:
            task.cancel()
        tail = "\n".join(self._stderr)
        sig = -code if code < 0 else None
        info = self._classify(code, sig, tail)
        if self._state is not VmState.FAILED:
            with contextlib.suppress(HypervisorError):
                self._set_state(info.state)
        self._events.close()
        self._serial.close()
        self._exit_info = info
        if self._tmp is not None:
            self._tmp.cleanup()
        log.log(
            logging.WARNING if info.state is VmState.FAILED else logging.INFO,
            "qemu exited: %s",
            info.cause,
            extra={"returncode": code, "vm_state": str(info.state)},
        )
        return info

    def _classify(self, code: int, sig: int | None, tail: str) -> ExitInfo:
        shutdown = self._shutdown_event
        reason = str(shutdown.data.get("reason", "")) if shutdown is not None else ""
        if self._panicked or reason == "guest-panic":
            return ExitInfo(code, "guest panicked", VmState.FAILED, sig, tail)
        if self._internal_error:
            cause = "the guest stopped with a hypervisor internal error"
            return ExitInfo(code, cause, VmState.FAILED, sig, tail)
        if code == 0 and shutdown is not None:
            if shutdown.data.get("guest") is True:
                cause = "guest powered off" if reason != "guest-reset" else "guest reset"
            elif self._stop_requested or reason == "host-qmp-quit":
                cause = "stopped by the launcher"
            else:
                cause = f"qemu shut down ({reason or 'no reason given'})"
            return ExitInfo(code, cause, VmState.SHUTDOWN, sig, tail)
        if self._stop_requested and sig in (signal.SIGTERM, signal.SIGKILL):
            cause = f"stopped by the launcher ({describe_exit(code, tail)})"
            return ExitInfo(code, cause, VmState.SHUTDOWN, sig, tail)
        return ExitInfo(code, describe_exit(code, tail), VmState.FAILED, sig, tail)

    # -- lifecycle operations ------------------------------------------------------------

    async def power_button(self) -> None:
        """Press the ACPI power button (``system_powerdown``)."""
        require("power_button", self._state)
        await self._command("system_powerdown")

    async def ping(self) -> None:
        """QMP ``query-status`` (answered by QEMU's main loop; a frozen QEMU does not)."""
        require("ping", self._state)
        await self._command("query-status")

    async def pause(self) -> None:
        """Pause the vCPUs (QMP ``stop``); the STOP event moves the state to Paused."""
        require("counters", self._state)
        await self._command("stop")

    async def resume(self) -> None:
        """Resume the vCPUs (QMP ``cont``); the RESUME event moves the state to Running."""
        require("counters", self._state)
        await self._command("cont")

    async def stop(self) -> None:
        """Quit QEMU now: QMP ``quit``, then SIGTERM, then SIGKILL, each bounded in time."""
        if self._proc is None:
            if self._state is VmState.CREATED:
                self._set_state(VmState.SHUTDOWN)
            return
        if self._exit_task is None or self._exit_task.done():
            return
        self._stop_requested = True
        if self._qmp is not None:
            with contextlib.suppress(HypervisorError):
                await self._command("quit")
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            if sig is not None and self._proc.returncode is None:
                log.warning("qemu did not quit in time; sending %s", sig.name)
                with contextlib.suppress(ProcessLookupError):
                    signal_vmm(self._proc.pid, sig, self._run_as)
            try:
                async with asyncio.timeout(self._quit_timeout):
                    await asyncio.shield(self._exit_task)
                return
            except TimeoutError:
                continue
        raise HypervisorError(f"QEMU pid {self._proc.pid} did not exit after SIGKILL")

    async def _kill(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                signal_vmm(self._proc.pid, signal.SIGKILL, self._run_as)

    async def wait(self) -> ExitInfo:
        """Resolve when QEMU exits, with its exit code, signal, cause and terminal state."""
        if self._exit_task is None:
            raise HypervisorError("QEMU was never started, so there is no exit to wait for")
        return await asyncio.shield(self._exit_task)

    def events(self) -> AsyncIterator[LifecycleEvent]:
        """Lifecycle events from the start, in arrival order; ends when QEMU exits."""
        return self._events.follow()

    def console_lines(self) -> AsyncIterator[str]:
        """Guest serial console lines (the last 2000 first), ending when QEMU exits."""
        return self._serial.follow()

    # -- counters and hot plug -----------------------------------------------------------

    async def counters(self) -> dict[str, dict[str, int]]:
        """Per-NIC byte/packet counters from the guest's view, read from each tap's sysfs.

        QEMU has no per-NIC counters over QMP; a tap's transmit is the guest's receive.
        NICs passed by fd or whose tap is not visible here are left out.
        """
        require("counters", self._state)
        assert self._config is not None
        out: dict[str, dict[str, int]] = {}
        swap = {"rx": "tx", "tx": "rx"}
        for dev in self._config.nets:
            stats = Path("/sys/class/net") / dev.tap / "statistics"
            row: dict[str, int] = {}
            for guest_dir, tap_dir in swap.items():
                for what in ("bytes", "packets", "dropped"):
                    with contextlib.suppress(OSError, ValueError):
                        row[f"{guest_dir}_{what}"] = int(
                            (stats / f"{tap_dir}_{what}").read_text().strip()
                        )
            if row:
                out[dev.id] = row
        return out

    def _take_port(self, device_id: str) -> str:
        if device_id in self._plugged:
            raise HypervisorError(f"device id {device_id!r} is already hot plugged")
        if not self._free_ports:
            assert self._config is not None
            raise HypervisorError(
                f"no free hot-plug port for {device_id} "
                f"(all {self._config.hotplug_ports} are in use)"
            )
        port = self._free_ports.pop(0)
        self._plugged[device_id] = port
        return port

    def _release_port(self, device_id: str) -> None:
        port = self._plugged.pop(device_id, None)
        if port is not None:
            self._free_ports.insert(0, port)
            self._free_ports.sort(key=lambda p: int(p[2:]))

    async def add_net(self, dev: NetDevice, fds: Sequence[int] = ()) -> None:
        """Hot plug a virtio-net NIC on a free root port, backed by ``dev.tap`` or ``fds``."""
        require("add_net", self._state)
        assert self._qmp is not None
        port = self._take_port(dev.id)
        backend: dict[str, object] = {"type": "tap", "id": netdev_id(dev.id)}
        try:
            if fds:
                names = []
                for index, fd in enumerate(fds):
                    name = f"{dev.id}-fd{index}"
                    self._qmp.send_fd(fd)
                    await self._command("getfd", {"fdname": name})
                    names.append(name)
                backend["fds" if len(names) > 1 else "fd"] = ":".join(names)
            else:
                backend.update(ifname=dev.tap, script="no", downscript="no")
                if dev.queues > 1:
                    backend["queues"] = dev.queues
            if self._vhost_net:
                backend["vhost"] = True
            await self._command("netdev_add", backend)
            driver = NIC_MODELS.get(dev.model)
            if driver is None:
                raise HypervisorError(f"NIC model {dev.model!r} of {dev.id} is not known")
            device: dict[str, object] = {
                "driver": driver,
                "id": dev.id,
                "netdev": netdev_id(dev.id),
                "mac": dev.mac,
                "bus": port,
            }
            if driver == "virtio-net-pci":
                device["host_mtu"] = dev.mtu
                if dev.queues > 1:
                    device.update(mq=True, vectors=2 * dev.queues + 2)
            try:
                await self._command("device_add", device)
                if not dev.link_up:
                    await self.set_link(dev.id, False)
            except HypervisorError:
                with contextlib.suppress(HypervisorError):
                    await self._command("device_del", {"id": dev.id})
                with contextlib.suppress(HypervisorError):
                    await self._command("netdev_del", {"id": netdev_id(dev.id)})
                raise
        except BaseException:
            self._release_port(dev.id)
            raise

    async def set_link(self, device_id: str, up: bool) -> None:
        """QMP ``set_link`` on the NIC ``device_id``: the guest sees carrier come or go."""
        require("set_link", self._state)
        await self._command("set_link", {"name": device_id, "up": up})
        log.info(
            "NIC %s link %s",
            device_id,
            "up" if up else "down",
            extra={"event": "link-state", "device": device_id, "up": up},
        )

    async def add_vfio(self, dev: VfioDevice) -> None:
        """Hot plug a VFIO PCI device on a free root port."""
        require("add_vfio", self._state)
        port = self._take_port(dev.id)
        host = dev.sysfs_path.rstrip("/").rsplit("/", 1)[-1]
        try:
            await self._command(
                "device_add", {"driver": "vfio-pci", "id": dev.id, "host": host, "bus": port}
            )
        except BaseException:
            self._release_port(dev.id)
            raise

    async def add_vdpa(self, dev: VdpaDevice) -> None:
        """Hot plug a vhost-vdpa NIC on a free root port."""
        require("add_vdpa", self._state)
        port = self._take_port(dev.id)
        pairs = max(1, (dev.num_queues or 2) // 2)
        try:
            backend: dict[str, object] = {
                "type": "vhost-vdpa",
                "id": netdev_id(dev.id),
                "vhostdev": dev.path,
            }
            if pairs > 1:
                backend["queues"] = pairs
            await self._command("netdev_add", backend)
            device: dict[str, object] = {
                "driver": "virtio-net-pci",
                "id": dev.id,
                "netdev": netdev_id(dev.id),
                "bus": port,
            }
            if pairs > 1:
                device.update(mq=True, vectors=2 * pairs + 2)
            if dev.iommu:
                device["iommu_platform"] = True
            await self._command("device_add", device)
        except BaseException:
            self._release_port(dev.id)
            raise

    async def remove_device(self, device_id: str) -> None:
        """Hot unplug ``device_id`` and wait (bounded) for the guest to release it."""
        require("remove_device", self._state)
        deleted = self._deleted.setdefault(device_id, asyncio.Event())
        deleted.clear()
        await self._command("device_del", {"id": device_id})
        try:
            async with asyncio.timeout(self._unplug_timeout):
                await deleted.wait()
        except TimeoutError as err:
            raise HypervisorError(
                f"the guest did not release device {device_id} within {self._unplug_timeout}s"
            ) from err
        finally:
            self._deleted.pop(device_id, None)
        self._release_port(device_id)
        with contextlib.suppress(HypervisorError):
            await self._command("netdev_del", {"id": netdev_id(device_id)})

    async def query_pci(self) -> list[dict[str, Any]]:
        """QMP ``query-pci``: every PCI bus with its devices (for tests and diagnostics)."""
        result = await self._command("query-pci")
        return list(result) if isinstance(result, list) else []

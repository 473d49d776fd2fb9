"""``CloudHypervisor``: the :class:`~hypervisor.base.Hypervisor` protocol over cloud-hypervisor.

The supervisor and the composition root create one :class:`CloudHypervisor` per VM and
drive it only through the protocol. ``start()`` spawns the binary
(:mod:`.process`), waits for the API socket, ``vmm.ping``, ``vm.create`` with the VmConfig
built by :mod:`.config`, opens every NIC's tap (:mod:`.taps`) and attaches it with
``vm.add-net`` and SCM_RIGHTS fds (:mod:`.client`), then ``vm.boot``. Lifecycle events are
read from the ``--event-monitor`` pipe (:mod:`.events`) and drive the VmState; the
terminal state is decided when the VMM process exits (Shutdown for a clean exit or one
the launcher asked for, Failed otherwise). Every wait is bounded by the constructor's
timeouts.
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
from collections.abc import AsyncIterator, Callable, Sequence

from hypervisor.base import ExitInfo, LifecycleEvent, RunAs, advance, require
from hypervisor.cloud_hypervisor.client import CloudHypervisorClient
from hypervisor.cloud_hypervisor.config import (
    device_config,
    net_config,
    vdpa_config,
    vm_config,
)
from hypervisor.cloud_hypervisor.events import EventParser
from hypervisor.cloud_hypervisor.process import VmmProcess, describe_exit
from hypervisor.cloud_hypervisor.taps import open_tap
from hypervisor.errors import ApiError, HypervisorError, StateError
from hypervisor.machine import MachineConfig, NetDevice, VdpaDevice, VfioDevice, VmState

__all__ = ["CloudHypervisor"]

log = logging.getLogger(__name__)

_HISTORY = 256
_TERMINAL = frozenset({VmState.SHUTDOWN, VmState.FAILED})

TapOpener = Callable[[str, int], list[int]]


def _listen_unix(path: str) -> socket.socket:
    """A unix stream socket listening at ``path`` (for the VMM to accept on)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(8)
    except OSError as err:
        sock.close()
        raise HypervisorError(f"cannot listen on the API socket {path}: {err}") from err
    return sock


class CloudHypervisor:
    """One VM run by one cloud-hypervisor process (implements ``hypervisor.base.Hypervisor``)."""

    def __init__(
        self,
        *,
        binary: str = "cloud-hypervisor",
        api_socket: str | None = None,
        api_timeout: float = 10.0,
        socket_timeout: float = 10.0,
        stop_timeout: float = 10.0,
        extra_args: Sequence[str] = (),
        tap_opener: TapOpener = open_tap,
        on_serial: Callable[[str], None] | None = None,
        run_as: RunAs | None = None,
    ) -> None:
        self.binary = binary
        self._run_as = run_as
        self.api_socket = api_socket or os.path.join(
            tempfile.gettempdir(), f"virt-launcher-ch-{os.getpid()}.sock"
        )
        self.api_timeout = api_timeout
        self.socket_timeout = socket_timeout
        self.stop_timeout = stop_timeout
        self._extra_args = tuple(extra_args)
        self._tap_opener = tap_opener
        self.on_serial = on_serial
        self._state = VmState.CREATED
        self._proc: VmmProcess | None = None
        self._client: CloudHypervisorClient | None = None
        self._exit_task: asyncio.Task[ExitInfo] | None = None
        self._events_task: asyncio.Task[None] | None = None
        self._history: deque[LifecycleEvent | None] = deque(maxlen=_HISTORY)
        self._subscribers: list[asyncio.Queue[LifecycleEvent | None]] = []
        self._stop_requested = False
        self._guest_off = False

    # --- protocol properties -----------------------------------------------------------

    @property
    def kind(self) -> str:
        """Always ``"cloud-hypervisor"``."""
        return "cloud-hypervisor"

    @property
    def state(self) -> VmState:
        """The current VmState."""
        return self._state

    @property
    def pid(self) -> int | None:
        """The VMM process id once spawned."""
        return None if self._proc is None else self._proc.pid

    def _serial_line(self, line: str) -> None:
        if self.on_serial is not None:
            self.on_serial(line)

    def _set_state(self, new: VmState) -> None:
        if new is self._state:
            return
        self._state = advance(self._state, new)
        log.info("VM state %s", new, extra={"event": "vm-state", "state": str(new)})

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self, config: MachineConfig) -> None:
        """Spawn, create, attach NICs, boot; on any failure kill the VMM and become Failed."""
        require("start", self._state)
        body = vm_config(config)  # refuse a config cloud-hypervisor cannot run before spawning
        nets = [(dev, net_config(dev, dev.queues)) for dev in config.nets]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.api_socket)
        # Run as another user, the VMM gets its API socket listening already (this process
        # made it, in a directory only this process writes).
        listener = _listen_unix(self.api_socket) if self._run_as is not None else None
        try:
            try:
                self._proc = await VmmProcess.spawn(
                    self.binary,
                    self.api_socket,
                    extra_args=self._extra_args,
                    on_serial=self._serial_line,
                    run_as=self._run_as,
                    api_fd=None if listener is None else listener.fileno(),
                )
            finally:
                if listener is not None:
                    listener.close()  # the VMM has its own copy
            self._events_task = asyncio.create_task(self._pump_events(), name="ch-events")
            self._exit_task = asyncio.create_task(self._watch_exit(), name="ch-exit")
            await self._proc.wait_for_socket(self.api_socket, self.socket_timeout)
            self._client = CloudHypervisorClient(self.api_socket, timeout=self.api_timeout)
            version = await self._client.ping()
            log.info("cloud-hypervisor API ready", extra={"version": version.get("version")})
            await self._client.create(body)
            for dev, cfg in nets:
                await self._attach_tap(dev, cfg)
            await self._client.boot()
            if self._state is VmState.CREATED:  # the booted event may have come first
                self._set_state(VmState.RUNNING)
        except HypervisorError as err:
            # A refused connection usually means the VMM died: give its exit time to show.
            early = await self._exited_on_its_own(0.1 if isinstance(err, ApiError) else 3.0)
            await self._fail()
            if early is not None and not str(err).startswith(early):
                raise HypervisorError(f"{early} while starting the VM ({err})") from err
            raise
        except BaseException:
            await self._fail()
            raise

    async def _exited_on_its_own(self, within: float) -> str | None:
        """If the VMM has died by itself (checked for up to ``within`` s), how it ended."""
        if self._proc is None:
            return None
        with contextlib.suppress(TimeoutError):
            code = await self._proc.wait(within)
            return describe_exit(code, self._proc.stderr_tail())
        return None

    async def _fail(self) -> None:
        if self._state not in _TERMINAL:
            self._state = VmState.FAILED
        await self._kill_quietly()

    async def _attach_tap(self, dev: NetDevice, cfg: dict[str, object]) -> None:
        assert self._client is not None
        fds = self._tap_opener(dev.tap, dev.queues)
        try:
            await self._client.add_net(cfg, fds)
        finally:
            for fd in fds:
                os.close(fd)

    async def power_button(self) -> None:
        """``vm.power-button``: ask the guest to power off."""
        require("power_button", self._state)
        self._guest_off = True  # before the call: the guest may be gone before it returns
        try:
            await self._api().power_button()
        except BaseException:
            self._guest_off = False
            raise

    async def ping(self) -> None:
        """``vmm.ping`` (answered by the VMM's API thread; a frozen VMM does not)."""
        require("ping", self._state)
        await self._api().ping()

    async def stop(self) -> None:
        """``vmm.shutdown``, then SIGTERM, then SIGKILL, each bounded by ``stop_timeout``."""
        if self._proc is None:
            if self._state is VmState.CREATED:
                self._set_state(VmState.SHUTDOWN)
            return
        self._stop_requested = True
        proc = self._proc
        if proc.returncode is None and self._client is not None:
            try:
                await self._client.vmm_shutdown()
            except HypervisorError as err:
                log.warning("vmm.shutdown failed, signalling the VMM: %s", err)
        for signum in (None, signal.SIGTERM, signal.SIGKILL):
            if signum is not None:
                log.warning("cloud-hypervisor still running; sending %s", signum.name)
                proc.signal(signum)
            try:
                await proc.wait(self.stop_timeout)
                break
            except TimeoutError:
                continue
        else:
            raise HypervisorError(
                f"cloud-hypervisor pid {proc.pid} did not exit within {self.stop_timeout:g} s "
                "of SIGKILL"
            )
        await self.wait()

    async def wait(self) -> ExitInfo:
        """The ExitInfo once the VMM has exited (``start()`` must have spawned it)."""
        if self._exit_task is None:
            raise StateError(self._state, [VmState.RUNNING, VmState.PAUSED])
        return await asyncio.shield(self._exit_task)

    async def _watch_exit(self) -> ExitInfo:
        assert self._proc is not None
        code = await self._proc.wait()
        if self._events_task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._events_task), 2.0)
        tail = self._proc.stderr_tail()
        signum = -code if code < 0 else None
        clean = code == 0 or (self._stop_requested and signum is not None)
        if self._state is VmState.FAILED:
            cause = (
                "the guest panicked" if self._saw("guest", "panic") else describe_exit(code, tail)
            )
        elif clean and self._stop_requested:
            cause = "stopped by the launcher: " + describe_exit(code, tail)
        elif clean and (self._guest_off or self._saw("vm", "shutdown")):
            cause = "guest powered off"
        else:
            cause = describe_exit(code, tail)
        final = VmState.SHUTDOWN if clean and self._state is not VmState.FAILED else VmState.FAILED
        if self._state not in _TERMINAL:
            self._state = advance(self._state, final)
        log.info("cloud-hypervisor ended: %s", cause, extra={"event": "vmm-exit", "code": code})
        self._publish(None)
        if self._client is not None:
            await self._client.close()
        await self._proc.close()
        return ExitInfo(
            returncode=code, cause=cause, state=self._state, signal=signum, stderr_tail=tail
        )

    async def _kill_quietly(self) -> None:
        if self._proc is None:
            return
        self._stop_requested = True
        self._proc.signal(signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            await self._proc.wait(self.stop_timeout)
        if self._exit_task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._exit_task), self.stop_timeout)

    # --- events ------------------------------------------------------------------------

    def _saw(self, source: str, name: str) -> bool:
        return any(e is not None and e.source == source and e.name == name for e in self._history)

    def _publish(self, event: LifecycleEvent | None) -> None:
        self._history.append(event)
        for queue in self._subscribers:
            queue.put_nowait(event)

    async def _pump_events(self) -> None:
        assert self._proc is not None
        parser = EventParser()
        reader = self._proc.events
        while chunk := await reader.read(65536):
            try:
                events = parser.feed(chunk)
            except HypervisorError as err:
                log.error("dropping event-monitor data: %s", err)
                parser = EventParser()
                continue
            for event in events:
                log.info(
                    "cloud-hypervisor event %s/%s",
                    event.source,
                    event.name,
                    extra={"event": f"{event.source}/{event.name}", "details": dict(event.details)},
                )
                if event.state is not None and self._state not in _TERMINAL:
                    try:
                        self._set_state(event.state)
                    except StateError as err:
                        log.warning("ignoring event %s: %s", event.name, err)
                self._publish(event)

    async def events(self) -> AsyncIterator[LifecycleEvent]:
        """Every event so far (last 256), then live ones; ends when the VMM has exited."""
        queue: asyncio.Queue[LifecycleEvent | None] = asyncio.Queue()
        for past in self._history:
            queue.put_nowait(past)
        self._subscribers.append(queue)
        try:
            while (event := await queue.get()) is not None:
                yield event
        finally:
            self._subscribers.remove(queue)

    # --- inspection and hot plug -------------------------------------------------------

    def _api(self) -> CloudHypervisorClient:
        if self._client is None:
            raise StateError(self._state, [VmState.RUNNING, VmState.PAUSED])
        return self._client

    async def counters(self) -> dict[str, dict[str, int]]:
        """``vm.counters``."""
        require("counters", self._state)
        return await self._api().counters()

    async def add_net(self, dev: NetDevice, fds: Sequence[int] = ()) -> None:
        """``vm.add-net`` with ``fds`` (kept open: the caller owns them) or the tap opened here."""
        require("add_net", self._state)
        if fds:
            await self._api().add_net(net_config(dev, len(fds)), fds)
        else:
            await self._attach_tap(dev, net_config(dev, dev.queues))

    async def add_vfio(self, dev: VfioDevice) -> None:
        """``vm.add-device``."""
        require("add_vfio", self._state)
        await self._api().add_device(device_config(dev))

    async def add_vdpa(self, dev: VdpaDevice) -> None:
        """``vm.add-vdpa``."""
        require("add_vdpa", self._state)
        await self._api().add_vdpa(vdpa_config(dev))

    async def remove_device(self, device_id: str) -> None:
        """``vm.remove-device``."""
        require("remove_device", self._state)
        await self._api().remove_device(device_id)

    async def set_link(self, device_id: str, up: bool) -> None:
        """Refused: cloud-hypervisor's API has no link state (validation refuses
        ``state: down`` for it first; docs/network.md "Link state")."""
        raise HypervisorError(
            f"cannot set the link of {device_id} {'up' if up else 'down'}: cloud-hypervisor "
            "has no link-state API"
        )

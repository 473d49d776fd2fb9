"""The ``Hypervisor`` protocol every VMM adapter implements, and its lifecycle rules as data.

Provides :class:`Hypervisor` (implemented by ``hypervisor.cloud_hypervisor`` and
``hypervisor.qemu``), the values it hands out (:class:`ExitInfo`, :class:`LifecycleEvent`),
the allowed :data:`TRANSITIONS` between :class:`~hypervisor.machine.VmState` values, the
states each operation needs (:data:`REQUIRED`) and two helpers that raise
:class:`~hypervisor.errors.StateError`: :func:`require` (guard an operation) and
:func:`advance` (validate a state change). The supervisor and the composition root call
adapters only through this protocol.

Lifecycle::

    Created ──start()──▶ Running ◀──▶ Paused
       │                   │            │
       └──────────┬────────┴────────────┘
                  ▼
       Shutdown (VMM exited after a guest power-off or stop())   Failed (start failed,
                                                                  VMM crashed, guest panic)

``Created`` is the state of a fresh adapter object (nothing spawned yet). ``Shutdown`` and
``Failed`` are terminal: an adapter object runs one VM once. A guest reboot keeps the VM
``Running`` (it is reported as an event only).
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TextIO, runtime_checkable

from hypervisor.errors import StateError
from hypervisor.machine import MachineConfig, NetDevice, VdpaDevice, VfioDevice, VmState

__all__ = [
    "RunAs",
    "signal_vmm",
    "serial_to_stdout",
    "Hypervisor",
    "ExitInfo",
    "LifecycleEvent",
    "TRANSITIONS",
    "REQUIRED",
    "require",
    "advance",
]


@dataclass(frozen=True, slots=True)
class RunAs:
    """The user a VMM process runs as: uid, gid and exactly these supplementary groups
    (switching needs CAP_SETUID and CAP_SETGID in the spawning process)."""

    uid: int
    gid: int
    groups: tuple[int, ...] = ()
    #: How to signal the VMM when this process may not (no CAP_KILL for another user):
    #: ``signal(pid, signum)`` asks a process that may (the launcher's helper). It does not
    #: wait: the caller waits for the exit it asked for, bounded, as always.
    signal: Callable[[int, int], None] | None = field(default=None, compare=False)


def signal_vmm(pid: int, signum: int, run_as: RunAs | None) -> None:
    """``os.kill(pid, signum)``, through ``run_as.signal`` when this process may not."""
    try:
        os.kill(pid, signum)
    except PermissionError:
        if run_as is None or run_as.signal is None:
            raise
        run_as.signal(pid, signum)


#: Every state change an adapter may make; anything else is a bug and raises StateError.
TRANSITIONS: Mapping[VmState, frozenset[VmState]] = {
    VmState.CREATED: frozenset({VmState.RUNNING, VmState.SHUTDOWN, VmState.FAILED}),
    VmState.RUNNING: frozenset({VmState.PAUSED, VmState.SHUTDOWN, VmState.FAILED}),
    VmState.PAUSED: frozenset({VmState.RUNNING, VmState.SHUTDOWN, VmState.FAILED}),
    VmState.SHUTDOWN: frozenset(),
    VmState.FAILED: frozenset(),
}

_ORDER = list(VmState)
_LIVE = frozenset({VmState.RUNNING, VmState.PAUSED})

#: The states in which each protocol operation may be called. ``stop``, ``wait``, ``events``
#: and reading ``state``/``pid`` are allowed in every state (stopping twice is a no-op).
REQUIRED: Mapping[str, frozenset[VmState]] = {
    "start": frozenset({VmState.CREATED}),
    "power_button": frozenset({VmState.RUNNING}),
    "counters": _LIVE,
    "ping": _LIVE,
    "add_net": _LIVE,
    "add_vfio": _LIVE,
    "add_vdpa": _LIVE,
    "remove_device": _LIVE,
    "set_link": _LIVE,
}


def require(operation: str, state: VmState) -> None:
    """Raise StateError unless ``operation`` (a key of REQUIRED) may run in ``state``."""
    allowed = REQUIRED[operation]
    if state not in allowed:
        raise StateError(state, [s for s in _ORDER if s in allowed])


def advance(current: VmState, new: VmState) -> VmState:
    """Return ``new`` if TRANSITIONS allows ``current`` → ``new``, else raise StateError.

    Staying in the same state is allowed (events may repeat, e.g. two ``resumed``).
    """
    if new is current or new in TRANSITIONS[current]:
        return new
    sources = [s for s in _ORDER if new in TRANSITIONS[s]]
    raise StateError(current, sources)


@dataclass(frozen=True, slots=True)
class ExitInfo:
    """How the VMM process ended.

    ``returncode`` is the process exit status (negative: killed by that signal, as in
    asyncio); ``signal`` is the signal number when killed; ``cause`` is one human sentence,
    e.g. ``"guest powered off"`` or ``"cloud-hypervisor exited with code 1: <stderr line>"``;
    ``state`` is the terminal VmState (Shutdown for a clean exit, Failed otherwise);
    ``stderr_tail`` holds the last lines the VMM wrote to stderr.
    """

    returncode: int
    cause: str
    state: VmState
    signal: int | None = None
    stderr_tail: str = ""


@dataclass(frozen=True, slots=True)
class LifecycleEvent:
    """One lifecycle event from the VMM (cloud-hypervisor event monitor, QEMU QMP event).

    ``name`` is the VMM's own event name, lower-case (``booted``, ``shutdown``, ``paused``,
    ``resumed``, ``reboot``, ``device-removed``, ``panic``…); ``source`` is where it came
    from (``vm``, ``vmm``, ``virtio-device``, ``qmp``); ``timestamp`` is seconds (monotonic
    or epoch, as the VMM reports it); ``state`` is the VmState the event implies, or None
    when it does not change the state; ``details`` are the VMM's extra string fields.
    """

    name: str
    source: str
    timestamp: float
    state: VmState | None = None
    details: Mapping[str, str] = field(default_factory=dict)


@runtime_checkable
class Hypervisor(Protocol):
    """One VM run by one VMM process. Implementations guard every call with :func:`require`.

    Every method that waits on the VMM has its own bounded timeout and raises
    :class:`~hypervisor.errors.HypervisorError` (or its subclass ``ApiError``) on failure.
    """

    @property
    def kind(self) -> str:
        """``"cloud-hypervisor"`` or ``"qemu"``."""
        ...

    @property
    def state(self) -> VmState:
        """The current lifecycle state (starts as Created)."""
        ...

    @property
    def pid(self) -> int | None:
        """The VMM process id once spawned, else None."""
        ...

    async def start(self, config: MachineConfig) -> None:
        """Spawn the VMM, create the VM, attach its devices and boot it (Created → Running)."""
        ...

    async def power_button(self) -> None:
        """Press the ACPI power button: ask the guest to shut down gracefully."""
        ...

    async def stop(self) -> None:
        """Make the VMM quit now (no guest cooperation); returns once it has exited."""
        ...

    async def ping(self) -> None:
        """Ask the VMM something trivial (QMP ``query-status`` / ``vmm.ping``); returns
        when it answered. Callers bound it with their own (short) timeout: a VMM that does
        not answer is frozen or deadlocked (launcher.liveness)."""
        ...

    async def wait(self) -> ExitInfo:
        """Resolve when the VMM process exits, with its exit code and cause."""
        ...

    def events(self) -> AsyncIterator[LifecycleEvent]:
        """Lifecycle events in arrival order; the iterator ends when the VMM exits."""
        ...

    async def counters(self) -> dict[str, dict[str, int]]:
        """Per-device counters, e.g. ``{"net0": {"rx_bytes": 1, ...}}``."""
        ...

    async def add_net(self, dev: NetDevice, fds: Sequence[int] = ()) -> None:
        """Hot plug a virtio-net NIC backed by the tap ``dev.tap`` or the pre-opened ``fds``."""
        ...

    async def add_vfio(self, dev: VfioDevice) -> None:
        """Hot plug a VFIO PCI device."""
        ...

    async def add_vdpa(self, dev: VdpaDevice) -> None:
        """Hot plug a vhost-vdpa device."""
        ...

    async def remove_device(self, device_id: str) -> None:
        """Hot unplug the device with ``device_id``."""
        ...

    async def set_link(self, device_id: str, up: bool) -> None:
        """Give the guest NIC ``device_id`` carrier (``up``) or take it away."""
        ...


def serial_to_stdout(
    prefix: str = "serial: ", stream: TextIO | None = None
) -> Callable[[str], None]:
    """An ``on_serial`` callback that writes each console line to stdout after ``prefix``.

    The composition root passes it to the adapter (QEMU, cloud-hypervisor) so the guest
    console shows up in the pod's log next to the launcher's JSON lines (on stderr).
    """

    def forward(line: str) -> None:
        out = stream or sys.stdout
        out.write(f"{prefix}{line}\n")
        out.flush()

    return forward

"""The status endpoint's data: what a run exposes (:class:`StatusSource`) and what is served.

The composition root (``launcher.run``) owns one :class:`StatusBoard` (or any object
satisfying :class:`StatusSource`) and tells it what happened: spec loaded, plan made,
network applied, DHCP servers started, hypervisor started, lifecycle events, stopping.
``launcher.status.collect`` reads it (plus live DHCP snapshots, netlink and /proc) into
the frozen :class:`StatusSnapshot` the server renders as ``/status``, ``/metrics`` and the
page. Nothing secret is ever copied into a snapshot: only named, non-secret spec fields
(never cloud-init data, environment or annotations) are read.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from hypervisor.base import Hypervisor, LifecycleEvent
from hypervisor.machine import VmState
from launcher.network.plan import NetworkPlan
from launcher.phase import STOPPING_PHASES, Phase
from launcher.spec.model import VmSpec

if TYPE_CHECKING:  # the servers' modules load after the VMM spawn (launcher.nics)
    from dhcp.ra import RaSnapshot
    from dhcp.v4.server import Dhcp4Snapshot
    from dhcp.v6.server import Dhcp6Snapshot
    from launcher.status.doctor import Diagnosis
    from launcher.status.probe import LinkOpener

__all__ = [
    "StatusSource",
    "StatusBoard",
    "StatusSnapshot",
    "Condition",
    "Event",
    "HypervisorStatus",
    "InterfaceStatus",
    "Lease",
    "DhcpCounters",
    "Traffic",
    "LauncherStatus",
    "ProcessPrivileges",
    "DhcpServer",
    "MAX_EVENTS",
    "CONDITION_TYPES",
]

MAX_EVENTS = 100
#: The conditions /readyz needs, in the order they become true.
CONDITION_TYPES = ("NetworkApplied", "DhcpServing", "HypervisorRunning")


class DhcpServer(Protocol):
    """Anything with a ``snapshot()`` of the three DHCP server kinds."""

    def snapshot(self) -> Dhcp4Snapshot | Dhcp6Snapshot | RaSnapshot: ...


@dataclass(frozen=True, slots=True)
class Event:
    """One entry of the event list: wall time, source, kind, interface, message."""

    time: float
    source: str  # launcher, hypervisor, dhcp4, dhcp6
    kind: str
    message: str = ""
    iface: str | None = None
    mac: str | None = None
    address: str | None = None


@runtime_checkable
class StatusSource(Protocol):
    """What the status server reads from a run; :class:`StatusBoard` implements it."""

    @property
    def started_at(self) -> float:
        """Wall time the launcher started."""
        ...

    @property
    def spec(self) -> VmSpec | None: ...

    @property
    def plan(self) -> NetworkPlan | None: ...

    @property
    def hypervisor(self) -> Hypervisor | None: ...

    @property
    def dhcp_servers(self) -> Sequence[tuple[str, object]]:
        """``(interface, server)`` pairs: Dhcp4Server, Dhcp6Server or RaServer objects."""
        ...

    @property
    def marks(self) -> Mapping[str, tuple[bool, str, str, float]]:
        """Condition type → (status, reason, message, wall time) as the run reported it."""
        ...

    @property
    def stopping(self) -> str | None:
        """Why the launcher is shutting down, or None while it is not."""
        ...

    def events(self) -> Sequence[Event]:
        """The last launcher and hypervisor lifecycle events, oldest first."""
        ...

    @property
    def helper_pid(self) -> int | None:
        """The privileged helper's pid (docs/privileges.md), once there is one."""
        ...

    @property
    def link_opener(self) -> LinkOpener | None:
        """How the doctor's probes open their socket (None: in this process)."""
        ...

    @property
    def hotplug(self) -> Mapping[str, tuple[str, str | None]]:
        """Interface name → (hot-plug state, last error) (docs/hotplug.md); may be empty."""
        ...

    @property
    def links(self) -> Mapping[str, str]:
        """Interface name → the link state the launcher set (``up``/``down``); an
        interface not listed reports its tap's state."""
        ...


class StatusBoard:
    """The mutable run state the composition root updates and the status server reads.

    The run TELLS it every change (spec, phase, plan, network applied, servers, the
    hypervisor and its lifecycle events, hot-plug states); nothing polls. Every method
    is cheap and synchronous (called from the event loop thread).
    """

    def __init__(self, *, started_at: float | None = None) -> None:
        self._started_at = time.time() if started_at is None else started_at
        self._spec: VmSpec | None = None
        self._plan: NetworkPlan | None = None
        self._hypervisor: Hypervisor | None = None
        self._hypervisor_set: asyncio.Event | None = None
        self._dhcp: list[tuple[str, object]] = []
        self._servers: Callable[[], Sequence[tuple[str, object]]] | None = None
        self.phase = Phase.STARTING
        self._marks: dict[str, tuple[bool, str, str, float]] = {}
        self._stopping: str | None = None
        self._events: collections.deque[Event] = collections.deque(maxlen=MAX_EVENTS)
        self._hotplug: dict[str, tuple[str, str | None]] = {}
        self._links: dict[str, str] = {}
        self._helper_pid: int | None = None
        self._link_opener: LinkOpener | None = None

    # ---- read side (StatusSource) ------------------------------------------------------

    @property
    def started_at(self) -> float:
        return self._started_at

    @property
    def spec(self) -> VmSpec | None:
        return self._spec

    @property
    def plan(self) -> NetworkPlan | None:
        return self._plan

    @property
    def hypervisor(self) -> Hypervisor | None:
        return self._hypervisor

    @property
    def dhcp_servers(self) -> Sequence[tuple[str, object]]:
        if self._servers is not None:
            return tuple(self._servers())
        return tuple(self._dhcp)

    @property
    def marks(self) -> Mapping[str, tuple[bool, str, str, float]]:
        return dict(self._marks)

    @property
    def stopping(self) -> str | None:
        return self._stopping

    def events(self) -> Sequence[Event]:
        return tuple(self._events)

    @property
    def hotplug(self) -> Mapping[str, tuple[str, str | None]]:
        return self._hotplug

    @property
    def helper_pid(self) -> int | None:
        return self._helper_pid

    def set_helper(self, pid: int) -> None:
        """The privileged helper runs as ``pid``."""
        self._helper_pid = pid

    @property
    def link_opener(self) -> LinkOpener | None:
        return self._link_opener

    def set_link_opener(self, opener: LinkOpener) -> None:
        """The doctor's probe sockets come from ``opener`` from now on (the launcher has
        dropped its capabilities: the privileged helper opens them)."""
        self._link_opener = opener

    def set_hotplug(self, name: str, state: str, error: str | None) -> None:
        """Record interface ``name``'s hot-plug state and last error."""
        self._hotplug[name] = (state, error)

    @property
    def links(self) -> Mapping[str, str]:
        return self._links

    def set_link(self, name: str, state: str) -> None:
        """Record the link state the launcher gave interface ``name`` (``up``/``down``)."""
        self._links[name] = state

    # ---- write side (the composition root) ---------------------------------------------

    def event(self, kind: str, message: str = "", *, source: str = "launcher", **kw: Any) -> None:
        """Record one launcher event (``spec-loaded``, ``network-applied``…)."""
        self._events.append(Event(time.time(), source, kind, message, **kw))

    def set_phase(self, phase: Phase, cause: str | None = None) -> None:
        """The run moved to ``phase``; from STOPPING on the run is winding down."""
        if phase is self.phase:
            return
        self.phase = phase
        self.event("phase", str(phase))
        if phase in STOPPING_PHASES:
            self.set_stopping(cause or f"launcher phase {phase}")

    def set_servers(self, servers: Callable[[], Sequence[tuple[str, object]]]) -> None:
        """Where the live ``(interface, server)`` list comes from (``launcher.nics.Nics``):
        read when a request asks, so plugged and unplugged NICs' servers show at once."""
        self._servers = servers

    def set_spec(self, spec: VmSpec) -> None:
        """The spec was loaded and validated."""
        self._spec = spec
        self.event("spec-loaded", f"{spec.namespace}/{spec.name}")

    def set_plan(self, plan: NetworkPlan) -> None:
        """The network plan was made (not applied yet)."""
        self._plan = plan

    def mark(self, condition: str, status: bool, reason: str, message: str = "") -> None:
        """Set one condition (``NetworkApplied``, ``DhcpServing``, ``HypervisorRunning``)."""
        old = self._marks.get(condition)
        if old is None or old[0] != status or old[1] != reason:
            self._marks[condition] = (status, reason, message, time.time())
            self.event(f"{condition}={status}", message or reason)

    def network_applied(self, message: str = "") -> None:
        """The pod network was wired as planned."""
        self.mark("NetworkApplied", True, "Applied", message)

    def add_dhcp(self, server: object, interface: str | None = None) -> None:
        """A DHCPv4/DHCPv6/RA server object for one guest-facing interface."""
        iface = interface or _server_interface(server)
        self._dhcp.append((iface, server))

    def dhcp_serving(self, message: str = "") -> None:
        """Every DHCP server of the plan is listening."""
        self.mark("DhcpServing", True, "Listening", message)

    def set_hypervisor(self, hypervisor: Hypervisor) -> None:
        """The hypervisor adapter object (its live state is read on every request)."""
        self._hypervisor = hypervisor
        self._waiter().set()
        self.hypervisor_state()

    def _waiter(self) -> asyncio.Event:
        if self._hypervisor_set is None:
            self._hypervisor_set = asyncio.Event()
        return self._hypervisor_set

    async def wait_hypervisor(self) -> Hypervisor:
        """The hypervisor adapter, once the run has one (the status task follows its events)."""
        await self._waiter().wait()
        assert self._hypervisor is not None
        return self._hypervisor

    def hypervisor_state(self) -> None:
        """The VM's state may have changed (the supervisor's phase, a lifecycle event):
        set ``HypervisorRunning`` from it."""
        hv = self._hypervisor
        if hv is not None:
            state = hv.state
            self.mark(
                "HypervisorRunning",
                state is VmState.RUNNING,
                str(state.value),
                f"{hv.kind} is {state.value}",
            )

    def lifecycle(self, ev: LifecycleEvent) -> None:
        """A lifecycle event from the VMM (``booted``, ``shutdown``, ``panic``…)."""
        details = ", ".join(f"{k}={v}" for k, v in sorted(ev.details.items()))
        self._events.append(
            Event(time.time(), "hypervisor", ev.name, details or ev.source, None, None, None)
        )
        self.hypervisor_state()

    def set_stopping(self, reason: str) -> None:
        """The launcher is shutting down (SIGTERM, guest power-off, failure)."""
        if self._stopping is None:
            self._stopping = reason
            self.event("stopping", reason)


def _server_interface(server: object) -> str:
    config = getattr(server, "config", None)
    iface = getattr(config, "interface", None)
    if not isinstance(iface, str):
        raise TypeError(f"cannot tell the interface of DHCP server {server!r}")
    return iface


# ---- the served snapshot ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Condition:
    """A Kubernetes-style condition."""

    type: str
    status: bool
    reason: str
    message: str
    last_transition_time: float


@dataclass(frozen=True, slots=True)
class Lease:
    """An address a DHCP server handed to the guest, and when."""

    family: str  # ipv4, ipv6
    address: str
    mac: str | None
    handed_out_at: float
    kind: str  # ack, bound, renewed…


@dataclass(frozen=True, slots=True)
class DhcpCounters:
    """DHCP traffic on one interface (v4 names; v6 adds advertises/replies)."""

    offers: int = 0
    acks: int = 0
    naks: int = 0
    declines: int = 0
    releases: int = 0
    informs: int = 0
    received: int = 0
    malformed: int = 0
    rate_limited: int = 0
    v6: Mapping[str, int] = field(default_factory=dict)
    router_adverts: int = 0
    router_solicits: int = 0
    serving: bool = False


@dataclass(frozen=True, slots=True)
class Traffic:
    """Guest NIC counters, from the guest's side (guest rx = tap tx)."""

    rx_bytes: int
    tx_bytes: int
    rx_packets: int
    tx_packets: int


@dataclass(frozen=True, slots=True)
class InterfaceStatus:
    """One guest NIC: KubeVirt ``status.interfaces`` fields plus the pod-side wiring."""

    name: str
    interface_name: str | None  # the in-guest name; unknown without a guest agent
    mac: str | None
    ip_address: str | None
    ip_addresses: tuple[str, ...]
    info_source: str
    queue_count: int
    link_state: str  # up, down, unknown
    binding: str
    pod_interface: str | None
    tap: str | None
    bridge: str | None
    leases: tuple[Lease, ...]
    dhcp: DhcpCounters
    traffic: Traffic | None
    hotplug_state: str | None = None  # docs/hotplug.md: boot, plugged, failed…
    hotplug_error: str | None = None
    diagnosis: Diagnosis | None = None  # the network doctor's (launcher.status.doctor)
    errors: tuple[int, int, int, int] = (0, 0, 0, 0)  # guest rx/tx errors, rx/tx dropped
    network: str | None = None  # "pod networking" or the Multus network name (KubeVirt's label)


@dataclass(frozen=True, slots=True)
class HypervisorStatus:
    """The VMM process."""

    kind: str
    pid: int | None
    state: str
    uptime_s: float | None
    cpu_s: float | None
    rss_bytes: int | None


@dataclass(frozen=True, slots=True)
class LauncherStatus:
    """The launcher process itself."""

    pid: int
    started_at: float
    uptime_s: float
    rss_bytes: int
    cpu_s: float
    loop_lag_s: float
    time_to_ready_s: float | None


@dataclass(frozen=True, slots=True)
class ProcessPrivileges:
    """One process's user and capabilities, from ``/proc/PID/status`` (docs/privileges.md)."""

    role: str  # launcher, helper, vmm
    pid: int
    uid: int
    gid: int
    cap_effective: tuple[str, ...]
    cap_permitted: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class StatusSnapshot:
    """Everything ``/status`` serves, at one instant."""

    time: float
    vm: str | None  # namespace/name
    phase: str
    ready: bool
    not_ready_reason: str | None
    conditions: tuple[Condition, ...]
    launcher: LauncherStatus
    hypervisor: HypervisorStatus | None
    interfaces: tuple[InterfaceStatus, ...]
    nftables_digest: str | None
    events: tuple[Event, ...]
    processes: tuple[ProcessPrivileges, ...] = ()

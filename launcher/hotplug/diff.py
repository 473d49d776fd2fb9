"""Pure diff of the running VM spec against a new spec + network-status: what to hot plug.

Called by the hot-plug manager each time the watcher reports a change. Nothing here
touches the system: the inputs are the running :class:`VmSpec`, the new one, the new
:class:`PodInfo` and the names of the links now in the pod network namespace.

Rules (docs/hotplug.md):

* an interface active in the new spec and not in the running one is plugged when its
  binding is ``bridge``, ``managedtap`` or ``sriov`` on a Multus (non-default) network; a bridge NIC
  whose pod interface is not in the pod yet (Multus has not added it) is *pending*;
* an interface running now that is removed from the new spec or marked
  ``state: absent`` is unplugged (not the pod network, not masquerade);
* a running interface whose ``state`` changes between ``up`` and ``down`` gets its link
  set (:class:`SetLink`: QEMU ``set_link``; docs/network.md "Link state");
* anything else that differs (CPU, memory, kernel, disks, volumes, multiqueue, the
  binding/MAC/model/MTU/network of a running interface) *needs a restart*: reported,
  never applied.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from launcher.errors import PodInfoError
from launcher.network.multus import map_interfaces
from launcher.network.names import POD_INTERFACE
from launcher.podinfo import PodInfo
from launcher.spec.model import (
    BindingKind,
    Interface,
    InterfaceState,
    MultusNetwork,
    Network,
    VmSpec,
)

__all__ = [
    "PlugNic",
    "UnplugNic",
    "SetLink",
    "NeedsRestart",
    "Pending",
    "SpecDiff",
    "diff",
    "PLUGGABLE",
]

PLUGGABLE = frozenset({BindingKind.BRIDGE, BindingKind.MANAGEDTAP, BindingKind.SRIOV})


@dataclass(frozen=True, slots=True)
class PlugNic:
    """Add ``interface`` to the running guest; ``pod_interface`` is None for SR-IOV."""

    interface: Interface
    network: Network
    pod_interface: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class UnplugNic:
    """Remove the running ``interface`` from the guest."""

    interface: Interface
    reason: str


@dataclass(frozen=True, slots=True)
class SetLink:
    """Give the running ``interface`` carrier (``up``) or take it away (spec ``state``)."""

    interface: Interface
    up: bool


@dataclass(frozen=True, slots=True)
class NeedsRestart:
    """A change that cannot be made to a running VM: reported, not applied."""

    what: str  # "cpu", "memory", "disks", "interface 'net1'", ...
    reason: str


@dataclass(frozen=True, slots=True)
class Pending:
    """An interface to plug whose pod side is not there yet (retried on the next change)."""

    interface: str
    reason: str


@dataclass(frozen=True, slots=True)
class SpecDiff:
    """Everything the new spec asks for, sorted by what the launcher can do about it."""

    unplug: tuple[UnplugNic, ...] = ()
    plug: tuple[PlugNic, ...] = ()
    needs_restart: tuple[NeedsRestart, ...] = ()
    pending: tuple[Pending, ...] = ()
    links: tuple[SetLink, ...] = ()

    @property
    def actions(self) -> tuple[PlugNic | UnplugNic, ...]:
        """The live changes in execution order: unplugs first (they free root ports)."""
        return (*self.unplug, *self.plug)

    @property
    def empty(self) -> bool:
        """True when the new spec changes nothing."""
        return not (self.unplug or self.plug or self.needs_restart or self.pending or self.links)


def _active(spec: VmSpec) -> dict[str, Interface]:
    return {i.name: i for i in spec.interfaces if i.state is not InterfaceState.ABSENT}


def _restart_fields(running: VmSpec, new: VmSpec) -> list[NeedsRestart]:
    out: list[NeedsRestart] = []
    checks: tuple[tuple[str, object, object], ...] = (
        ("uid", running.uid, new.uid),
        ("cpu", running.cpu, new.cpu),
        ("memory", running.memory_bytes, new.memory_bytes),
        ("kernel", running.kernel, new.kernel),
        ("disks", running.disks, new.disks),
        ("volumes", running.volumes, new.volumes),
        (
            "networkInterfaceMultiqueue",
            running.network_interface_multiqueue,
            new.network_interface_multiqueue,
        ),
    )
    for what, old, now in checks:
        if old != now:
            out.append(NeedsRestart(what, f"{what} changed from {old!r} to {now!r}"))
    return out


def _hot_pluggable_network(network: Network) -> bool:
    return isinstance(network.source, MultusNetwork) and not network.source.default


def _compare(
    name: str, old: Interface, new: Interface, old_net: Network, new_net: Network
) -> list[NeedsRestart]:
    what = f"interface {name!r}"
    out: list[NeedsRestart] = []
    if old.binding.kind is not new.binding.kind:
        out.append(
            NeedsRestart(what, f"binding changed from {old.binding.kind} to {new.binding.kind}")
        )
    elif old.binding != new.binding:
        out.append(NeedsRestart(what, f"{new.binding.kind} binding settings changed"))
    for label, a, b in (
        ("macAddress", old.mac, new.mac),
        ("model", old.model, new.model),
        ("pciAddress", old.pci_address, new.pci_address),
        ("dhcpOptions", old.dhcp_options, new.dhcp_options),
        ("bootOrder", old.boot_order, new.boot_order),
        ("mtu", old.mtu, new.mtu),
    ):
        if a != b:
            out.append(NeedsRestart(what, f"{label} changed from {a!r} to {b!r}"))
    if old_net.source != new_net.source:
        out.append(NeedsRestart(what, f"network source changed to {new_net.source!r}"))
    return out


def diff(
    running: VmSpec,
    new: VmSpec,
    podinfo: PodInfo | None = None,
    pod_links: Iterable[str] = (),
    pod_interface: str = POD_INTERFACE,
) -> SpecDiff:
    """What ``new`` asks of the VM now running ``running``; pure. ``pod_interface``: the
    pod network's interface (``run --pod-interface``)."""
    links = frozenset(pod_links)
    restart = _restart_fields(running, new)
    before, after = _active(running), _active(new)
    new_names = {i.name for i in new.interfaces}
    unplug: list[UnplugNic] = []
    link_changes: list[SetLink] = []
    for name, iface in before.items():
        if name in after:
            if iface.state is not after[name].state:
                link_changes.append(SetLink(after[name], after[name].state is InterfaceState.UP))
            restart.extend(
                _compare(
                    name,
                    iface,
                    after[name],
                    running.network_for(iface),
                    new.network_for(after[name]),
                )
            )
            continue
        reason = "state: absent" if name in new_names else "removed from the spec"
        network = running.network_for(iface)
        if iface.binding.kind not in PLUGGABLE or not _hot_pluggable_network(network):
            restart.append(
                NeedsRestart(
                    f"interface {name!r}",
                    f"{reason}, but a {iface.binding.kind} interface on "
                    f"{_describe(network)} cannot be unplugged live",
                )
            )
            continue
        unplug.append(UnplugNic(iface, reason))
    added = [i for name, i in after.items() if name not in before]
    plug: list[PlugNic] = []
    pending: list[Pending] = []
    if added:
        try:
            mappings = map_interfaces(new, podinfo, links, pod_interface)
        except PodInfoError as err:
            mappings = None
            mapping_error = str(err)
        for iface in added:
            network = new.network_for(iface)
            what = f"interface {iface.name!r}"
            if iface.binding.kind not in PLUGGABLE:
                restart.append(
                    NeedsRestart(what, f"a {iface.binding.kind} interface cannot be plugged live")
                )
                continue
            if not _hot_pluggable_network(network):
                restart.append(NeedsRestart(what, f"{_describe(network)} cannot be plugged live"))
                continue
            if mappings is None:
                pending.append(Pending(iface.name, mapping_error))
                continue
            pod_if = mappings[iface.name].pod_interface
            if iface.binding.kind is BindingKind.SRIOV:
                plug.append(PlugNic(iface, network, pod_if, "added to the spec"))
            elif pod_if is None or pod_if not in links:
                pending.append(
                    Pending(
                        iface.name,
                        f"pod interface {pod_if!r} for network {iface.network!r} "
                        "is not in the pod yet",
                    )
                )
            else:
                plug.append(PlugNic(iface, network, pod_if, "added to the spec"))
    return SpecDiff(
        unplug=tuple(unplug),
        plug=tuple(plug),
        needs_restart=tuple(restart),
        pending=tuple(pending),
        links=tuple(link_changes),
    )


def _describe(network: Network) -> str:
    source = network.source
    if isinstance(source, MultusNetwork):
        kind = "the default Multus network" if source.default else "Multus network"
        return f"{kind} {source.network_name!r}"
    return "the pod network"

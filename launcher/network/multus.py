"""Map each spec network to the pod interface the CNI created for it, and say which rule matched.

Called by ``plan`` (every NIC, including SR-IOV and vDPA) and shown by ``virt-launcher
plan`` as ``interfaces``. Pure: it reads the spec, the :class:`~launcher.podinfo.PodInfo`
and the names of the links present in the pod, never the system.

Rules, first match wins:

``pod-network``
    the pod network is ``eth0``.
``multus-default``
    a Multus network marked ``default: true`` replaces the pod network: ``eth0``.
``network-status``
    the Multus ``k8s.v1.cni.cncf.io/network-status`` entry whose ``name`` is the
    network's ``namespace/networkName`` (the namespace defaults to the VM's). When one
    network attachment is listed more than once, the entries are taken in spec order.
    With a network-status present, a network missing from it is an error: the CNI did
    not attach it.
``virtink-ordinal``
    no network-status: Virtink asks Multus for ``net<i>``, ``i`` the network's index in
    ``spec.networks`` (the pod network counts).
``kubevirt-hashed``
    no network-status: KubeVirt (≥ 1.0) asks for ``pod`` + the first 11 hex digits of
    sha256(spec network name).
``kubevirt-ordinal`` / ``multus-ordinal``
    no network-status: ``net1``, ``net2``… in the order of the Multus networks (older
    KubeVirt, and Multus' own default), used when that link exists and the preferred
    name does not.
"""

from __future__ import annotations

import enum
import hashlib
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from launcher.errors import PodInfoError
from launcher.podinfo import NetworkStatus, PodInfo
from launcher.spec.model import (
    BindingKind,
    Interface,
    InterfaceState,
    MultusNetwork,
    SourceShape,
    VmSpec,
)

from .devices import GuestVdpa, GuestVfio
from .sysfs import HostPaths

__all__ = [
    "InterfaceMapping",
    "MappingRule",
    "PassthroughBinding",
    "PassthroughContext",
    "PassthroughNic",
    "kubevirt_hashed_name",
    "map_interfaces",
    "qualified_network_name",
]

POD_INTERFACE = "eth0"


class MappingRule(enum.StrEnum):
    """Which rule tied a spec network to its pod interface."""

    POD_NETWORK = "pod-network"
    MULTUS_DEFAULT = "multus-default"
    NETWORK_STATUS = "network-status"
    VIRTINK_ORDINAL = "virtink-ordinal"
    KUBEVIRT_HASHED = "kubevirt-hashed"
    KUBEVIRT_ORDINAL = "kubevirt-ordinal"
    MULTUS_ORDINAL = "multus-ordinal"


@dataclass(frozen=True, slots=True)
class InterfaceMapping:
    """One spec interface, its network and the pod interface it uses."""

    interface: str  # spec interface name
    network: str  # spec network name
    network_name: str | None  # "namespace/networkName" for Multus networks
    pod_interface: str | None  # None: a VFIO/vDPA device with no netdev in the pod
    rule: MappingRule
    status: NetworkStatus | None = None  # the network-status entry, when one matched


@dataclass(frozen=True, slots=True)
class PassthroughNic:
    """A guest NIC that is a host device (SR-IOV VF over VFIO, or vhost-vdpa): no tap, no DHCP.

    ``mac``/``ips``/``gateways``/``dns`` are what the CNI programmed (network-status), so
    the cloud-init network-config can configure the guest; ``device_source`` says where
    the PCI address or device path came from.
    """

    name: str
    binding: BindingKind
    network: str
    mapping: InterfaceMapping
    device: GuestVfio | GuestVdpa
    device_source: str
    mac: str | None = None
    ips: tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, ...] = ()
    gateways: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...] = ()
    nameservers: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...] = ()
    search: tuple[str, ...] = ()
    mtu: int | None = None


@dataclass(frozen=True, slots=True)
class PassthroughContext:
    """What a passthrough binding gets to plan one device."""

    spec: VmSpec
    interface: Interface
    index: int  # position among the spec's interfaces that are up
    mapping: InterfaceMapping
    mappings: dict[str, InterfaceMapping]  # every interface (to share device-plugin pools)
    podinfo: PodInfo | None
    host: HostPaths


class PassthroughBinding(Protocol):
    """Plans one host-device NIC (the counterpart of ``bindings.Binding`` for VFIO/vDPA)."""

    kind: BindingKind

    def plan_device(self, ctx: PassthroughContext) -> PassthroughNic:
        """The device for ``ctx``; NetworkError/PodInfoError naming what is wrong."""
        ...


def qualified_network_name(network_name: str, namespace: str) -> str:
    """``name`` → ``namespace/name``; an already qualified name is kept."""
    return network_name if "/" in network_name else f"{namespace}/{network_name}"


def kubevirt_hashed_name(network: str) -> str:
    """KubeVirt's pod interface name for a secondary network (GenerateHashedInterfaceName)."""
    return "pod" + hashlib.sha256(network.encode()).hexdigest()[:11]


def _fallback(
    spec: VmSpec, network_index: int, multus_index: int, name: str, links: frozenset[str]
) -> tuple[str, MappingRule]:
    if spec.shape is SourceShape.VIRTINK:
        candidates = [
            (f"net{network_index}", MappingRule.VIRTINK_ORDINAL),
            (f"net{multus_index + 1}", MappingRule.MULTUS_ORDINAL),
        ]
    else:
        candidates = [
            (kubevirt_hashed_name(name), MappingRule.KUBEVIRT_HASHED),
            (f"net{multus_index + 1}", MappingRule.KUBEVIRT_ORDINAL),
        ]
    for candidate in candidates:
        if candidate[0] in links:
            return candidate
    return candidates[0]


def map_interfaces(
    spec: VmSpec,
    podinfo: PodInfo | None = None,
    pod_links: Iterable[str] = (),
    pod_interface: str = POD_INTERFACE,
) -> dict[str, InterfaceMapping]:
    """Spec interface name → :class:`InterfaceMapping`, for every interface in the spec.

    ``pod_interface`` is the pod network's interface (``eth0`` unless ``run
    --pod-interface`` says otherwise).

    Raises PodInfoError when a network-status is present but has no entry for a Multus
    network, naming the network and what the annotation does list.
    """
    links = frozenset(pod_links)
    status = podinfo.network_status if podinfo is not None else None
    by_network: dict[str, InterfaceMapping] = {}
    # (spec network, qualified name, expected pod interface, fallback rule) per secondary
    secondary: list[tuple[str, str, str, MappingRule]] = []
    multus_index = 0
    for index, network in enumerate(spec.networks):
        source = network.source
        if not isinstance(source, MultusNetwork):
            by_network[network.name] = InterfaceMapping(
                "", network.name, None, pod_interface, MappingRule.POD_NETWORK
            )
            continue
        qualified = qualified_network_name(source.network_name, spec.namespace)
        if source.default:
            entry = None
            if status is not None:
                entry = next(
                    (e for e in status if e.name == qualified),
                    next((e for e in status if e.default), None),
                )
            by_network[network.name] = InterfaceMapping(
                "", network.name, qualified, pod_interface, MappingRule.MULTUS_DEFAULT, entry
            )
            continue
        pod_if, rule = _fallback(spec, index, multus_index, network.name, links)
        secondary.append((network.name, qualified, pod_if, rule))
        multus_index += 1
    # A network whose interfaces are all being unplugged (state: absent) may already be
    # gone from the network-status: it keeps its fallback name instead of failing.
    wanted = {i.network for i in spec.interfaces if i.state is not InterfaceState.ABSENT}
    fallback = {name: (qualified, pod_if, rule) for name, qualified, pod_if, rule in secondary}
    if status is not None:
        assigned = _assign(status, secondary, wanted)
        for name, qualified, entry in assigned:
            by_network[name] = InterfaceMapping(
                "", name, qualified, entry.interface, MappingRule.NETWORK_STATUS, entry
            )
    for name, (qualified, pod_if, rule) in fallback.items():
        if name not in by_network:
            by_network[name] = InterfaceMapping("", name, qualified, pod_if, rule)
    out: dict[str, InterfaceMapping] = {}
    for iface in spec.interfaces:
        m = by_network.get(iface.network)
        if m is None:
            continue  # validation pairs every interface with a network
        out[iface.name] = InterfaceMapping(
            iface.name, m.network, m.network_name, m.pod_interface, m.rule, m.status
        )
    return out


def _assign(
    status: tuple[NetworkStatus, ...],
    secondary: list[tuple[str, str, str, MappingRule]],
    wanted: set[str],
) -> list[tuple[str, str, NetworkStatus]]:
    """Pair each secondary network with its network-status entry.

    An entry on the interface the launcher expects (``net<i>``/``pod<hash>``) is taken
    first; the remaining networks of one attachment take its remaining entries in order.
    A network not in ``wanted`` (only unplugged interfaces use it) may have no entry.
    """
    used: set[int] = set()
    picked: dict[str, int] = {}
    for name, qualified, expected, _ in secondary:
        for i, e in enumerate(status):
            if i not in used and e.name == qualified and e.interface == expected:
                used.add(i)
                picked[name] = i
                break
    out: list[tuple[str, str, NetworkStatus]] = []
    for name, qualified, _, _ in secondary:
        if name not in picked:
            i = next((i for i, e in enumerate(status) if i not in used and e.name == qualified), -1)
            if i < 0 and name not in wanted:
                continue
            if i < 0:
                listed = ", ".join(repr(e.name) for e in status) or "nothing"
                raise PodInfoError(
                    f"network {name!r} ({qualified}) has no entry in the Multus "
                    f"network-status (it lists {listed}): check that the "
                    f"NetworkAttachmentDefinition {qualified} exists and its CNI succeeded"
                )
            used.add(i)
            picked[name] = i
        out.append((name, qualified, status[picked[name]]))
    return out

"""The network plan's types: frozen data, and the few pure helpers on them.

The plan (:mod:`launcher.network.plan`) builds these; the bindings (``bindings``) fill
one :class:`NicPlan` each from a :class:`NicContext`; apply, cleanup, status and
cloud-init read them. Kept apart from the planner so the bindings depend on the types
only, and the planner on the bindings (no import cycle). The per-NIC DHCPv4/DHCPv6/RA
configuration is the ``dhcp`` package's own config types, which its servers consume as
is (what ``virt-launcher plan`` prints is what is served).
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from typing import Any

from dhcp.raconfig import RaConfig
from dhcp.v4.config import Dhcp4Config
from dhcp.v6.lease import Config6
from launcher.errors import Problem, SpecError
from launcher.jsonable import JsonValue, to_jsonable
from launcher.podinfo import PodInfo
from launcher.spec.model import (
    ISTIO_PORTS,
    MIGRATION_PORTS,
    BindingKind,
    Interface,
    VmSpec,
    reserved_ports,
)
from launcher.status.listen import DEFAULT_STATUS_PORT

from .devices import GuestNic, GuestVdpa, GuestVfio
from .discover import PodLink, PodState
from .multus import InterfaceMapping, PassthroughNic
from .names import POD_INTERFACE, stand_in_peer_name
from .netlink import Route
from .nftables import NftFragment
from .sysctl import Sysctl
from .sysfs import HostPaths

__all__ = [
    "NetworkPlan",
    "PlanOptions",
    "BridgeLink",
    "LinkSettings",
    "NicContext",
    "NicPlan",
    "PodPort",
    "TapLink",
    "DEFAULT_STATUS_PORT",
    "ISTIO_PORTS",
    "MIGRATION_PORTS",
    "IPV6_MIN_MTU",
    "link_local_from_mac",
    "served_options",
]

IPV6_MIN_MTU = 1280  # RFC 8200


@dataclass(frozen=True, slots=True)
class PlanOptions:
    """Knobs of the plan that do not come from the spec."""

    status_port: int = DEFAULT_STATUS_PORT  # the launcher's own port, never DNATed
    lease_time_s: int = 86400
    router_lifetime_s: int = 1800
    # Test mode: a tap carries nothing without a VMM, so each "tap" is a veth whose
    # peer (``vlg<N>``) is moved into this netns, where a DHCP client plays the guest.
    stand_in_netns: str | None = None
    # Secondary networks: the Multus network-status and device-plugin env (launcher.podinfo),
    # and where sysfs and /dev are for the SR-IOV/vDPA checks (a fake tree in tests).
    podinfo: PodInfo | None = None
    host: HostPaths = field(default_factory=HostPaths)
    # The pod network's interface: eth0, as Kubernetes names it, unless `run
    # --pod-interface` says otherwise.
    pod_interface: str = POD_INTERFACE


@dataclass(frozen=True, slots=True)
class BridgeLink:
    """The in-pod bridge of one guest NIC."""

    name: str
    mac: str  # fixed, so the bridge's IPv6 link-local is known in the plan
    mtu: int
    addresses: tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, ...] = ()


@dataclass(frozen=True, slots=True)
class TapLink:
    """The tap the hypervisor opens (or, in test mode, the veth standing in for it)."""

    name: str
    bridge: str
    mtu: int
    queues: int = 1
    stand_in_netns: str | None = None
    stand_in_peer: str | None = None
    stand_in_mac: str | None = None  # the guest MAC, as the VMM would use it

    @property
    def multi_queue(self) -> bool:
        """A tap with more than one queue pair must be created multiqueue."""
        return self.queues > 1


@dataclass(frozen=True, slots=True)
class LinkSettings:
    """Per-interface settings of one link, set through netlink, never through /proc/sys.

    ``ipv4``: ``net.ipv4.conf.<name>.<knob>`` values as (knob, value) pairs, set with
    ``IFLA_INET_CONF``. ``no_link_local``: the kernel generates no IPv6 link-local on
    this link (``IFLA_INET6_ADDR_GEN_MODE`` none, set while the link is still down): the
    launcher owns the link's link-local (the bridge's is in its ``addresses``, added
    without DAD) or it needs none (the tap, a bridge port).
    """

    name: str
    ipv4: tuple[tuple[str, int], ...] = ()
    no_link_local: bool = False


@dataclass(frozen=True, slots=True)
class PodPort:
    """Bridge binding: the pod interface becomes a bridge port without its addresses."""

    name: str
    bridge: str
    new_mac: str | None  # the guest took the original MAC; None = keep it
    learning: bool = False
    remove_addresses: tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, ...] = ()


@dataclass(frozen=True, slots=True)
class NicPlan:
    """Everything planned for one guest NIC."""

    name: str  # the spec interface name
    index: int
    binding: BindingKind
    pod_interface: str
    original: PodLink  # the pod interface as the CNI left it (cached in the state dir)
    bridge: BridgeLink
    tap: TapLink
    device: GuestNic
    pod_port: PodPort | None = None
    routes: tuple[Route, ...] = ()  # routes to (re)create in the pod netns
    sysctls: tuple[Sysctl, ...] = ()  # pod-level only (plan's module docstring)
    link_settings: tuple[LinkSettings, ...] = ()  # per-interface, through netlink
    # What the NIC's DHCPv4, DHCPv6 and RA servers serve, exactly (consumed as is).
    dhcp4: Dhcp4Config | None = None
    dhcp6: Config6 | None = None
    ra: RaConfig | None = None
    guest_ipv4: ipaddress.IPv4Interface | None = None
    guest_ipv6: ipaddress.IPv6Interface | None = None
    nft: NftFragment = field(default_factory=NftFragment)


@dataclass(frozen=True, slots=True)
class NetworkPlan:
    """The whole plan: per-NIC plans, pod-level sysctls and the one nftables document.

    ``sysctls``: exactly the pod-level ``net.*`` sysctls the plan needs (plan's module
    docstring).
    """

    nics: tuple[NicPlan, ...]
    sysctls: tuple[Sysctl, ...] = ()
    nftables: str = ""
    passthrough: tuple[PassthroughNic, ...] = ()  # SR-IOV VFs and vDPA devices
    interfaces: tuple[InterfaceMapping, ...] = ()  # spec interface → pod interface, and why

    @property
    def devices(self) -> tuple[GuestNic, ...]:
        """The tap-backed guest NICs, in spec order."""
        return tuple(n.device for n in self.nics)

    @property
    def vfio(self) -> tuple[GuestVfio, ...]:
        """The SR-IOV VFs, in spec order."""
        return tuple(p.device for p in self.passthrough if isinstance(p.device, GuestVfio))

    @property
    def vdpa(self) -> tuple[GuestVdpa, ...]:
        """The vhost-vdpa devices, in spec order."""
        return tuple(p.device for p in self.passthrough if isinstance(p.device, GuestVdpa))

    def to_dict(self) -> dict[str, Any]:
        """The plan as plain JSON-compatible data, with each NIC's ``served`` options: the
        DHCPv4 options its server puts in an ACK (computed by the server's own code,
        :func:`dhcp.v4.logic.lease_options`: what ``plan`` prints is what is served)."""
        out = to_jsonable(self)
        assert isinstance(out, dict) and isinstance(out["nics"], list)
        for nic, view in zip(self.nics, out["nics"], strict=True):
            assert isinstance(view, dict)
            view["served"] = served_options(nic)
        return out

    def to_json(self, indent: int | None = 2) -> str:
        """The plan as JSON text (what ``virt-launcher plan`` prints)."""
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False)


def served_options(nic: NicPlan) -> JsonValue:
    """The DHCPv4 options ``nic``'s server sends in an ACK to its guest (no request list:
    a client's list picks from these), each as :func:`dhcp.v4.options.describe` shows it."""
    from dhcp.v4.logic import lease_options  # noqa: PLC0415 - startup: servers after the spawn
    from dhcp.v4.options import describe  # noqa: PLC0415 - the same

    if nic.dhcp4 is None:
        return {"dhcp4": None}
    options = lease_options(nic.dhcp4, nic.dhcp4.leases[0])
    data: dict[str, object] = {"dhcp4": [describe(code, value) for code, value in options]}
    return to_jsonable(data)


def link_local_from_mac(mac: str) -> ipaddress.IPv6Address:
    """The EUI-64 IPv6 link-local address the kernel gives an interface with ``mac``."""
    octets = [int(b, 16) for b in mac.split(":")]
    octets[0] ^= 0x02
    eui = [*octets[:3], 0xFF, 0xFE, *octets[3:]]
    return ipaddress.IPv6Address(bytes([0xFE, 0x80, 0, 0, 0, 0, 0, 0, *eui]))


@dataclass(frozen=True, slots=True)
class NicContext:
    """What a binding gets to plan one guest NIC."""

    spec: VmSpec
    interface: Interface
    index: int
    pod_link: PodLink
    pod: PodState
    options: PlanOptions

    @property
    def queues(self) -> int:
        """Queue pairs: the vCPU count when the spec asks for multiqueue, else 1.
        Only virtio NICs have queues (KubeVirt: multiqueue applies to virtio only)."""
        if not self.spec.network_interface_multiqueue or self.interface.model != "virtio":
            return 1
        return self.spec.cpu.vcpus

    def mtu(self, *, ipv6: bool) -> int:
        """The guest NIC's MTU (tap, bridge, DHCP option 26, RA, ``host_mtu``): the
        interface's ``mtu`` override, else the pod link's.

        An override above the pod link's MTU, or below 1280 on a NIC that carries IPv6,
        is a SpecError (exit 2) naming the field: the launcher never raises the pod
        link's MTU (docs/network.md "MTU").
        """
        wanted = self.interface.mtu
        link = self.pod_link
        if wanted is None:
            return link.mtu
        path = f"{self.spec.interface_path(self.index)}.mtu"
        if wanted > link.mtu:
            raise SpecError(
                [
                    Problem(
                        path,
                        f"{wanted} is above the MTU {link.mtu} of pod interface "
                        f"{link.name!r}: the launcher does not raise the pod link's MTU "
                        "(the CNI sets it for the path beyond the pod)",
                    )
                ]
            )
        if ipv6 and wanted < IPV6_MIN_MTU:
            raise SpecError(
                [
                    Problem(
                        path,
                        f"{wanted} is below {IPV6_MIN_MTU}, the minimum IPv6 MTU, and this "
                        "interface carries IPv6",
                    )
                ]
            )
        return wanted

    @property
    def hostname(self) -> str:
        """The guest hostname: the spec's, else the pod's, else the VM name."""
        return self.spec.hostname or self.pod.hostname or self.spec.name

    @property
    def reserved_ports(self) -> tuple[int, ...]:
        """Ports the pod itself uses: never DNATed into the guest."""
        return tuple(sorted(self.reserved_uses))

    @property
    def reserved_uses(self) -> dict[int, str]:
        """Each reserved port and what uses it (for messages)."""
        return reserved_ports(dict(self.spec.annotations), self.options.status_port)

    def tap(self, name: str, bridge: str, mtu: int, guest_mac: str) -> TapLink:
        """The tap (or test stand-in veth) for this NIC."""
        stand_in = self.options.stand_in_netns
        return TapLink(
            name=name,
            bridge=bridge,
            mtu=mtu,
            queues=self.queues,
            stand_in_netns=stand_in,
            stand_in_peer=stand_in_peer_name(self.index) if stand_in else None,
            stand_in_mac=guest_mac if stand_in else None,
        )

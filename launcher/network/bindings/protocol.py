"""The small ``Binding`` protocol every binding module implements, and rules they share.

Each binding (bridge, masquerade; SR-IOV and vDPA later) turns a :class:`NicContext`
into a :class:`NicPlan`. The registry in ``bindings/__init__`` maps a spec binding kind
to its implementation; ``plan`` calls ``plan_nic`` once per guest NIC.
"""

from __future__ import annotations

import ipaddress
from typing import Protocol

from dhcp.raconfig import RaConfig
from dhcp.v4.config import Dhcp4Config, Lease4
from dhcp.v6.lease import Config6, Lease6
from launcher.spec.model import BindingKind, InterfaceState

from ..devices import GuestNic
from ..model import IPV6_MIN_MTU, NicContext, NicPlan
from ..names import device_id

__all__ = [
    "Binding",
    "antispoof_rules",
    "dhcp4_config",
    "dhcp6_config",
    "ra_config",
    "guest_nic",
    "dhcp_containment_rules",
    "nft_set",
    "IPV6_MIN_MTU",
]


class Binding(Protocol):
    """Contributes one guest NIC to the plan."""

    kind: BindingKind

    def plan_nic(self, ctx: NicContext) -> NicPlan:
        """The whole plan for the NIC in ``ctx`` (pure; NetworkError when impossible)."""
        ...


def nft_set(elements: list[str] | tuple[str, ...]) -> str:
    """An anonymous nft set literal."""
    return "{ " + ", ".join(elements) + " }"


def antispoof_rules(
    tap: str,
    mac: str,
    ipv4: ipaddress.IPv4Address | None,
    ipv6: ipaddress.IPv6Address | None,
) -> tuple[str, ...]:
    """Bridge prerouting rules dropping frames from ``tap`` with a foreign MAC or IP.

    DHCPv4 needs 0.0.0.0, IPv6 DAD needs ::, and the guest's link-local (fe80::/10)
    is its own business; everything else must carry the guest's addresses.
    """
    ip4 = [str(ipv4)] if ipv4 else []
    ip6 = [str(ipv6)] if ipv6 else []
    q = f'iifname "{tap}"'
    return (
        f"{q} ether saddr != {mac} drop",
        f"{q} ether type arp arp saddr ether != {mac} drop",
        f"{q} ether type arp arp saddr ip != {nft_set([*ip4, '0.0.0.0'])} drop",
        f"{q} ether type ip ip saddr != {nft_set([*ip4, '0.0.0.0'])} drop",
        f"{q} ether type ip6 ip6 saddr != {nft_set([*ip6, 'fe80::/10', '::'])} drop",
    )


def dhcp_containment_rules(pod_port: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(prerouting, postrouting) bridge rules keeping DHCP/RA between guest and launcher."""
    q_in = f'iifname "{pod_port}"'
    q_out = f'oifname "{pod_port}"'
    dhcp = "udp dport { 67, 68, 546, 547 } drop"
    return (
        (
            f"{q_in} ether type ip {dhcp}",
            f"{q_in} ether type ip6 {dhcp}",
            f"{q_in} icmpv6 type {{ nd-router-solicit, nd-router-advert }} drop",
        ),
        (
            f"{q_out} ether type ip {dhcp}",
            f"{q_out} ether type ip6 {dhcp}",
            f"{q_out} icmpv6 type {{ nd-router-solicit, nd-router-advert }} drop",
        ),
    )


def dhcp4_config(
    ctx: NicContext,
    *,
    interface: str,
    server_address: ipaddress.IPv4Address,
    client_mac: str,
    address: ipaddress.IPv4Interface,
    router: ipaddress.IPv4Address | None,
    mtu: int,
    routes: tuple[tuple[ipaddress.IPv4Network, ipaddress.IPv4Address], ...] = (),
) -> Dhcp4Config:
    """The DHCPv4 server configuration for one NIC: the binding's addressing plus what
    every binding hands out the same way (resolv.conf DNS and search list, hostname,
    lease time and KubeVirt's per-interface ``dhcpOptions``). ``routes`` are the pod's
    other routes; the server's one rule (:func:`dhcp.v4.config.classless_routes`) makes
    option 121 from them. ValueError names a value the server cannot serve."""
    resolv = ctx.pod.resolv
    opts = ctx.interface.dhcp_options
    return Dhcp4Config(
        interface=interface,
        server_address=server_address,
        leases=(Lease4(mac=client_mac, address=address, hostname=ctx.hostname),),
        router=router,
        dns=resolv.nameservers4,
        search=resolv.search,
        domain=resolv.search[0] if resolv.search else None,
        hostname=ctx.hostname,
        mtu=mtu,
        routes=routes,
        lease_time=ctx.options.lease_time_s,
        ntp=opts.ntp_servers if opts else (),
        boot_file=opts.boot_file_name if opts else None,
        tftp_server=opts.tftp_server_name if opts else None,
        private_options=tuple((p.option, p.value.encode()) for p in opts.private_options)
        if opts
        else (),
    )


def dhcp6_config(
    ctx: NicContext, *, interface: str, client_mac: str, address: ipaddress.IPv6Interface
) -> Config6:
    """The DHCPv6 server configuration for one NIC: its one lease plus the pod's
    resolv.conf DNS servers and search list."""
    resolv = ctx.pod.resolv
    return Config6(
        interface=interface,
        leases=(Lease6(address=address, mac=client_mac),),
        dns=resolv.nameservers6,
        search=resolv.search,
        preferred_lifetime=ctx.options.lease_time_s,
        valid_lifetime=ctx.options.lease_time_s,
    )


def ra_config(
    ctx: NicContext,
    *,
    interface: str,
    prefixes: tuple[ipaddress.IPv6Network, ...],
    mtu: int,
    default_router: bool,
) -> RaConfig:
    """Router advertisements for one NIC (DHCPv6 cannot carry a default route): M and O
    set, the on-link prefixes, the MTU when IPv6 can use it, resolv.conf DNS (RDNSS,
    DNSSL); router lifetime 0 when the pod has no IPv6 default route to offer."""
    resolv = ctx.pod.resolv
    return RaConfig(
        interface=interface,
        prefixes=prefixes,
        router_lifetime=ctx.options.router_lifetime_s if default_router else 0,
        mtu=mtu if mtu >= IPV6_MIN_MTU else None,
        rdnss=resolv.nameservers6,
        dnssl=resolv.search,
    )


def guest_nic(ctx: NicContext, tap: str, mac: str, mtu: int) -> GuestNic:
    """The guest's tap-backed NIC: spec model, PCI address and boot order, queue pairs."""
    return GuestNic(
        id=device_id(ctx.index),
        tap=tap,
        mac=mac,
        mtu=mtu,
        queues=ctx.queues,
        pci_address=ctx.interface.pci_address,
        boot_order=ctx.interface.boot_order,
        model=ctx.interface.model,
        link_up=ctx.interface.state is not InterfaceState.DOWN,
    )

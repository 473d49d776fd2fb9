"""The small ``Binding`` protocol every binding module implements, and rules they share.

Each binding (bridge, masquerade; SR-IOV and vDPA later) turns a :class:`NicContext`
into a :class:`NicPlan`. The registry in ``bindings/__init__`` maps a spec binding kind
to its implementation; ``plan`` calls ``plan_nic`` once per guest NIC.
"""

from __future__ import annotations

import ipaddress
from typing import Protocol

from launcher.spec.model import BindingKind

from ..plan import Dhcp4Config, NicContext, NicPlan

__all__ = ["Binding", "antispoof_rules", "dhcp4_config", "dhcp_containment_rules", "nft_set"]


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
    routers: tuple[ipaddress.IPv4Address, ...],
    mtu: int,
    classless_routes: tuple[tuple[ipaddress.IPv4Network, ipaddress.IPv4Address], ...] = (),
) -> Dhcp4Config:
    """The DHCPv4 lease for one NIC: the binding's addressing plus what every binding
    hands out the same way (resolv.conf DNS and search list, hostname, lease time and
    KubeVirt's per-interface ``dhcpOptions``)."""
    resolv = ctx.pod.resolv
    opts = ctx.interface.dhcp_options
    return Dhcp4Config(
        interface=interface,
        server_address=server_address,
        client_mac=client_mac,
        address=address,
        routers=routers,
        classless_routes=classless_routes,
        dns=resolv.nameservers4,
        search=resolv.search,
        domain_name=resolv.search[0] if resolv.search else None,
        hostname=ctx.hostname,
        mtu=mtu,
        lease_time_s=ctx.options.lease_time_s,
        ntp_servers=opts.ntp_servers if opts else (),
        boot_file_name=opts.boot_file_name if opts else None,
        tftp_server_name=opts.tftp_server_name if opts else None,
        private_options=tuple((p.option, p.value) for p in opts.private_options) if opts else (),
    )

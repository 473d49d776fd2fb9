"""Bridge binding: the guest takes the pod interface's MAC and addresses (KubeVirt/Virtink).

Called through the registry by ``plan``. The pod interface gets a new, stable
locally-administered MAC, loses its addresses and joins the NIC's bridge with MAC
learning off; the guest receives the pod's IPv4 address by DHCPv4 (from a
169.254.75.x server address on the bridge, never the pod IP) and its IPv6 address by
DHCPv6 plus router advertisements from the bridge's link-local. DHCP and RA never leave
through the pod port, and frames from the tap must carry the guest's MAC and addresses.
On a secondary (Multus) network whose pod interface has no address (no IPAM) the NIC is
plain L2: no DHCP/RA is served, DHCP may cross the pod port, only the MAC is enforced.
"""

from __future__ import annotations

import ipaddress

from hypervisor.machine import NetDevice
from launcher.errors import NetworkError
from launcher.spec.model import BindingKind, MultusNetwork

from ..discover import PodLink
from ..names import bridge_name, derived_mac, device_id, tap_name
from ..netlink import Route
from ..nftables import NftFragment
from ..plan import (
    BridgeLink,
    Dhcp6Config,
    NicContext,
    NicPlan,
    PodPort,
    RaConfig,
    link_local_from_mac,
)
from ..sysctl import Sysctl
from .protocol import antispoof_rules, dhcp4_config, dhcp_containment_rules

__all__ = ["SERVER_NET4", "BridgeBinding", "classless_routes"]

SERVER_NET4 = ipaddress.IPv4Network("169.254.75.0/24")
_ANY4 = ipaddress.IPv4Address("0.0.0.0")


def classless_routes(
    link: PodLink, address: ipaddress.IPv4Interface
) -> tuple[
    tuple[ipaddress.IPv4Address, ...],
    tuple[tuple[ipaddress.IPv4Network, ipaddress.IPv4Address], ...],
]:
    """(routers for option 3, routes for option 121) from the pod's IPv4 routes.

    A gateway outside the address's subnet (Calico's /32 with 169.254.1.1) gets an
    on-link host route first and the default route last; option 121 makes clients
    ignore option 3, so when 121 is sent it always carries the default route too.
    """
    default = link.default_gateway(4)
    gw = default.gateway if default is not None else None
    routers: tuple[ipaddress.IPv4Address, ...] = ()
    if isinstance(gw, ipaddress.IPv4Address):
        routers = (gw,)
    extra: list[tuple[ipaddress.IPv4Network, ipaddress.IPv4Address]] = []
    for r in link.routes:
        if not isinstance(r.dst, ipaddress.IPv4Network) or r.dst.prefixlen == 0:
            continue
        hop = r.gateway if isinstance(r.gateway, ipaddress.IPv4Address) else _ANY4
        if r.dst == address.network and hop == _ANY4:
            continue  # the subnet route the mask already implies
        extra.append((r.dst, hop))
    if routers and routers[0] not in address.network:
        host = ipaddress.IPv4Network(f"{routers[0]}/32")
        if all(dst != host for dst, _ in extra):
            extra.insert(0, (host, _ANY4))
    if extra and routers:
        extra.append((ipaddress.IPv4Network("0.0.0.0/0"), routers[0]))
    return routers, tuple(extra)


class BridgeBinding:
    """Plans a bridge-bound guest NIC."""

    kind = BindingKind.BRIDGE

    def plan_nic(self, ctx: NicContext) -> NicPlan:
        """The bridge-binding plan for ``ctx`` (see the module docstring)."""
        link = ctx.pod_link
        br = bridge_name(ctx.index)
        tap = tap_name(ctx.index)
        if link.master is not None and link.master != br:
            raise NetworkError(
                f"pod interface {link.name!r} is already a port of {link.master!r}, "
                "not a plain interface the launcher can bridge"
            )
        if link.kind == "bridge":
            raise NetworkError(f"pod interface {link.name!r} is itself a bridge")
        # A secondary (Multus) network without IPAM: plain L2, the guest brings its own
        # addresses (or asks a DHCP server on that network); nothing is served here.
        l2_only = not link.addresses4 and not link.addresses6
        if l2_only and not isinstance(ctx.spec.network_for(ctx.interface).source, MultusNetwork):
            raise NetworkError(
                f"pod interface {link.name!r} has no IPv4 or global IPv6 address to hand "
                "to the guest"
            )
        guest_mac = ctx.interface.mac or link.mac
        new_mac = derived_mac(f"pod/{link.mac}", avoid=link.mac) if guest_mac == link.mac else None
        bridge_mac = derived_mac(f"bridge/{link.name}/{link.mac}", avoid=guest_mac)
        bridge_ll = link_local_from_mac(bridge_mac)
        server4 = SERVER_NET4.network_address + 10 + ctx.index
        resolv = ctx.pod.resolv
        mtu = link.mtu

        dhcp4 = None
        guest4 = link.addresses4[0] if link.addresses4 else None
        if guest4 is not None:
            routers, routes121 = classless_routes(link, guest4)
            dhcp4 = dhcp4_config(
                ctx,
                interface=br,
                server_address=server4,
                client_mac=guest_mac,
                address=guest4,
                routers=routers,
                classless_routes=routes121,
                mtu=mtu,
            )

        dhcp6 = ra = None
        guest6 = link.addresses6[0] if link.addresses6 else None
        routes: list[Route] = []
        sysctls = [
            Sysctl(f"net.ipv4.conf.{br}.arp_ignore", "1"),
            Sysctl(f"net.ipv4.conf.{link.name}.arp_ignore", "1"),
            Sysctl(f"net.ipv6.conf.{br}.accept_dad", "0"),
        ]
        if guest6 is not None:
            dhcp6 = Dhcp6Config(
                interface=br,
                server_address=bridge_ll,
                client_mac=guest_mac,
                address=guest6.ip,
                dns=resolv.nameservers6,
                search=resolv.search,
                hostname=ctx.hostname,
                preferred_lifetime_s=ctx.options.lease_time_s,
                valid_lifetime_s=ctx.options.lease_time_s,
            )
            default6 = link.default_gateway(6)
            prefixes = (guest6.network,) if guest6.network.prefixlen < 128 else ()
            ra = RaConfig(
                interface=br,
                source=bridge_ll,
                source_mac=bridge_mac,
                router_lifetime_s=ctx.options.router_lifetime_s if default6 else 0,
                prefixes=prefixes,
                mtu=mtu,
                rdnss=resolv.nameservers6,
                dnssl=resolv.search,
            )
            # The bridge is the guest's IPv6 router (DHCPv6 has no default route):
            # the pod netns keeps the pod's IPv6 routes on the bridge and forwards.
            routes += [Route(dst=p, gateway=None, ifname=br) for p in prefixes]
            if not prefixes:  # a /128 pod address: the pod netns needs a host route to it
                routes.append(Route(dst=guest6.network, gateway=None, ifname=br))
            routes += [
                Route(dst=r.dst, gateway=r.gateway, ifname=br, onlink=r.onlink)
                for r in link.routes
                if r.dst.version == 6
            ]
            if default6 is not None:
                sysctls.append(Sysctl("net.ipv6.conf.all.forwarding", "1"))

        pre, post = dhcp_containment_rules(link.name)
        anti = antispoof_rules(
            tap, guest_mac, guest4.ip if guest4 else None, guest6.ip if guest6 else None
        )
        if l2_only:  # only the MAC is known: no IP anti-spoofing, DHCP may cross the port
            pre, post, anti = (), (), anti[:2]
        return NicPlan(
            name=ctx.interface.name,
            index=ctx.index,
            binding=self.kind,
            pod_interface=link.name,
            original=link,
            bridge=BridgeLink(
                name=br,
                mac=bridge_mac,
                mtu=mtu,
                addresses=() if l2_only else (ipaddress.IPv4Interface(server4),),
            ),
            tap=ctx.tap(tap, br, mtu, guest_mac),
            device=NetDevice(
                id=device_id(ctx.index),
                tap=tap,
                mac=guest_mac,
                mtu=mtu,
                queues=ctx.queues,
                pci_address=ctx.interface.pci_address,
                boot_order=ctx.interface.boot_order,
                model=ctx.interface.model,
            ),
            pod_port=PodPort(
                name=link.name,
                bridge=br,
                new_mac=new_mac,
                learning=False,
                remove_addresses=(*link.addresses4, *link.addresses6),
            ),
            routes=tuple(routes),
            sysctls=tuple(sysctls),
            dhcp4=dhcp4,
            dhcp6=dhcp6,
            ra=ra,
            guest_ipv4=guest4,
            guest_ipv6=guest6,
            nft=NftFragment(bridge_prerouting=(*anti, *pre), bridge_postrouting=post),
        )

"""Bridge binding: the guest takes the pod interface's MAC and addresses (KubeVirt/Virtink).

Called through the registry by ``plan``. The pod interface gets a new, stable
locally-administered MAC, loses its addresses and joins the NIC's bridge with MAC
learning off; the guest receives the pod's IPv4 address by DHCPv4 (from a
169.254.75.x server address on the bridge, never the pod IP) and its IPv6 address by
DHCPv6 plus router advertisements from the bridge's link-local. DHCP and RA never leave
through the pod port, and frames from the tap must carry the guest's MAC and addresses.
On a secondary (Multus) network whose pod interface has no address (no IPAM) the NIC is
plain L2: no DHCP/RA is served, DHCP may cross the pod port, only the MAC is enforced.

Several addresses on the pod interface: the guest gets the first IPv4 (the kernel's first
primary: the CNI's pod IP) and the first IPv6 (the oldest global one, discover's order);
DHCP can hand out only one per family. The others stay on the pod side, on the NIC's
bridge, with the pod's IPv4 routes when an IPv4 address stays: nothing is lost, and the
pod's own processes keep using them (docs/network.md).
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass

from dhcp.raconfig import RaConfig
from dhcp.v4.config import Dhcp4Config
from dhcp.v6.lease import Config6
from launcher.errors import NetworkError
from launcher.spec.model import BindingKind, MultusNetwork

from ..discover import PodLink
from ..model import (
    BridgeLink,
    LinkSettings,
    NicContext,
    NicPlan,
    PodPort,
    link_local_from_mac,
)
from ..names import bridge_name, derived_mac, tap_name
from ..netlink import Route
from ..nftables import NftFragment
from ..sysctl import Sysctl
from .protocol import (
    antispoof_rules,
    dhcp4_config,
    dhcp6_config,
    dhcp_containment_rules,
    guest_nic,
    ra_config,
)

__all__ = ["SERVER_NET4", "BridgeBinding", "pod_routes4"]

log = logging.getLogger(__name__)

SERVER_NET4 = ipaddress.IPv4Network("169.254.75.0/24")
_ANY4 = ipaddress.IPv4Address("0.0.0.0")


def pod_routes4(
    link: PodLink,
) -> tuple[
    ipaddress.IPv4Address | None, tuple[tuple[ipaddress.IPv4Network, ipaddress.IPv4Address], ...]
]:
    """(router for option 3, the pod's other IPv4 routes) from ``link``'s routes.

    The DHCPv4 server's one rule (:func:`dhcp.v4.config.classless_routes`) makes option
    121 from these: nothing when the router is in the guest's subnet and there is no other
    route, else an on-link host route to an off-subnet router (Calico's 169.254.1.1)
    first, these routes, and the default route last.
    """
    default = link.default_gateway(4)
    gw = default.gateway if default is not None else None
    router = gw if isinstance(gw, ipaddress.IPv4Address) else None
    routes = tuple(
        (r.dst, r.gateway if isinstance(r.gateway, ipaddress.IPv4Address) else _ANY4)
        for r in link.routes
        if isinstance(r.dst, ipaddress.IPv4Network) and r.dst.prefixlen
    )
    return router, routes


@dataclass(frozen=True, slots=True)
class _Macs:
    """The guest takes the pod interface's MAC unless the spec names one; the pod
    interface then gets a new stable one; the bridge's own is fixed (its IPv6 link-local
    is the RA/DHCPv6 source)."""

    guest: str
    pod_new: str | None
    bridge: str


def _macs(ctx: NicContext) -> _Macs:
    link = ctx.pod_link
    guest = ctx.interface.mac or link.mac
    pod_new = derived_mac(f"pod/{link.mac}", avoid=link.mac) if guest == link.mac else None
    return _Macs(guest, pod_new, derived_mac(f"bridge/{link.name}/{link.mac}", avoid=guest))


def _check_pod_link(ctx: NicContext, bridge: str, *, managed: bool = False) -> bool:
    """Refuse a pod interface the launcher cannot bridge; True when it is plain L2.

    A secondary (Multus) network without IPAM is plain L2: the guest brings its own
    addresses (or asks a DHCP server on that network) and nothing is served here.
    """
    link = ctx.pod_link
    if link.master is not None and link.master != bridge:
        raise NetworkError(
            f"pod interface {link.name!r} is already a port of {link.master!r}, "
            "not a plain interface the launcher can bridge"
        )
    if link.kind == "bridge":
        raise NetworkError(f"pod interface {link.name!r} is itself a bridge")
    l2_only = not link.addresses4 and not link.addresses6
    if managed:  # the CNI serves the guest: nothing is served here, only the MAC enforced
        return True
    if l2_only and not isinstance(ctx.spec.network_for(ctx.interface).source, MultusNetwork):
        raise NetworkError(
            f"pod interface {link.name!r} has no IPv4 or global IPv6 address to hand to the guest"
        )
    return l2_only


@dataclass(frozen=True, slots=True)
class _Ipv6:
    """The IPv6 half of a bridge NIC: DHCPv6 + RA config and the pod-side routes."""

    dhcp6: Config6
    ra: RaConfig
    routes: tuple[Route, ...]
    forwarding: bool


def _ipv6(
    ctx: NicContext, bridge: str, guest_mac: str, guest6: ipaddress.IPv6Interface, mtu: int
) -> _Ipv6:
    """The bridge is the guest's IPv6 router (DHCPv6 has no default route): the pod
    netns keeps the pod's IPv6 routes on the bridge and forwards."""
    link = ctx.pod_link
    default6 = link.default_gateway(6)
    prefixes = (guest6.network,) if guest6.network.prefixlen < 128 else ()
    routes = [Route(dst=p, gateway=None, ifname=bridge) for p in prefixes]
    if not prefixes:  # a /128 pod address: the pod netns needs a host route to it
        routes.append(Route(dst=guest6.network, gateway=None, ifname=bridge))
    routes += [
        Route(dst=r.dst, gateway=r.gateway, ifname=bridge, onlink=r.onlink)
        for r in link.routes
        if r.dst.version == 6
    ]
    return _Ipv6(
        dhcp6=dhcp6_config(ctx, interface=bridge, client_mac=guest_mac, address=guest6),
        ra=ra_config(
            ctx,
            interface=bridge,
            prefixes=prefixes,
            mtu=mtu,
            default_router=default6 is not None,
        ),
        routes=tuple(routes),
        forwarding=default6 is not None,
    )


def _server4(ctx: NicContext) -> ipaddress.IPv4Address:
    """The DHCPv4 server's address on the NIC's bridge: link-local, never the pod IP."""
    return SERVER_NET4.network_address + 10 + ctx.index


def _dhcp4(
    ctx: NicContext, bridge: str, guest_mac: str, guest4: ipaddress.IPv4Interface, mtu: int
) -> Dhcp4Config:
    router, routes = pod_routes4(ctx.pod_link)
    return dhcp4_config(
        ctx,
        interface=bridge,
        server_address=_server4(ctx),
        client_mac=guest_mac,
        address=guest4,
        router=router,
        routes=routes,
        mtu=mtu,
    )


def _nft(
    ctx: NicContext,
    tap: str,
    guest_mac: str,
    guest4: ipaddress.IPv4Interface | None,
    guest6: ipaddress.IPv6Interface | None,
    *,
    l2_only: bool,
) -> NftFragment:
    """Anti-spoofing on the tap; DHCP/RA kept between the guest and the launcher."""
    anti = antispoof_rules(
        tap, guest_mac, guest4.ip if guest4 else None, guest6.ip if guest6 else None
    )
    if l2_only:  # only the MAC is known: no IP anti-spoofing, DHCP may cross the port
        return NftFragment(bridge_prerouting=anti[:2])
    pre, post = dhcp_containment_rules(ctx.pod_link.name)
    return NftFragment(bridge_prerouting=(*anti, *pre), bridge_postrouting=post)


class BridgeBinding:
    """Plans a bridge-bound guest NIC."""

    kind = BindingKind.BRIDGE

    def plan_nic(self, ctx: NicContext) -> NicPlan:
        """The bridge-binding plan for ``ctx`` (see the module docstring); the managedtap
        binding (:mod:`.managedtap`) is the same without any server of ours."""
        link = ctx.pod_link
        br = bridge_name(ctx.index)
        tap = tap_name(ctx.index)
        managed = self.kind is BindingKind.MANAGEDTAP
        l2_only = _check_pod_link(ctx, br, managed=managed)
        macs = _macs(ctx)
        guest4 = link.addresses4[0] if link.addresses4 else None
        guest6 = link.addresses6[0] if link.addresses6 else None
        mtu = ctx.mtu(ipv6=guest6 is not None)
        served6 = guest6 is not None and not l2_only  # managedtap/plain L2: nothing served
        ipv6 = _ipv6(ctx, br, macs.guest, guest6, mtu) if served6 and guest6 is not None else None
        # pod-level only: per-link settings go through netlink (link_settings)
        sysctls = [Sysctl("net.ipv6.conf.all.forwarding", "1")] if ipv6 and ipv6.forwarding else []
        bridge_addresses: list[ipaddress.IPv4Interface | ipaddress.IPv6Interface] = []
        if not l2_only:
            bridge_addresses.append(ipaddress.IPv4Interface(_server4(ctx)))
        if ipv6 is not None:
            # the DHCPv6/RA source: the kernel makes none (no_link_local), so no DAD
            bridge_addresses.append(
                ipaddress.IPv6Interface(f"{link_local_from_mac(macs.bridge)}/64")
            )
        # DHCP hands the guest one address per family; the pod's others stay on the pod
        # side, on the bridge (the pod's own processes keep them), never lost
        kept: list[ipaddress.IPv4Interface | ipaddress.IPv6Interface] = [
            *link.addresses4[1:],
            *link.addresses6[1:],
        ]
        bridge_addresses += kept
        if kept:
            log.info(
                "pod interface %s has more addresses than DHCP hands one guest: the guest "
                "gets %s; %s stay on the pod side, on %s",
                link.name,
                " and ".join(str(a) for a in (guest4, guest6) if a is not None),
                ", ".join(map(str, kept)),
                br,
                extra={"event": "addresses-kept-in-pod", "kept": [str(a) for a in kept]},
            )
        routes = list(ipv6.routes) if ipv6 is not None else []
        if link.addresses4[1:]:
            # their IPv4 routes follow them; gateways are on the pod port's link, behind
            # the bridge, though maybe not in a subnet the bridge has: on-link
            routes += [
                Route(dst=r.dst, gateway=r.gateway, ifname=br, onlink=r.onlink or bool(r.gateway))
                for r in link.routes
                if r.dst.version == 4
            ]
        return NicPlan(
            name=ctx.interface.name,
            index=ctx.index,
            binding=self.kind,
            pod_interface=link.name,
            original=link,
            bridge=BridgeLink(name=br, mac=macs.bridge, mtu=mtu, addresses=tuple(bridge_addresses)),
            tap=ctx.tap(tap, br, mtu, macs.guest),
            device=guest_nic(ctx, tap, macs.guest, mtu),
            pod_port=PodPort(
                name=link.name,
                bridge=br,
                new_mac=macs.pod_new,
                learning=False,
                remove_addresses=(*link.addresses4, *link.addresses6),
            ),
            routes=tuple(routes),
            sysctls=tuple(sysctls),
            dhcp4=(
                _dhcp4(ctx, br, macs.guest, guest4, mtu)
                if guest4 is not None and not l2_only
                else None
            ),
            dhcp6=ipv6.dhcp6 if ipv6 is not None else None,
            ra=ipv6.ra if ipv6 is not None else None,
            # arp_ignore=1: the pod never answers ARP for the guest's address
            link_settings=(
                LinkSettings(br, ipv4=(("arp_ignore", 1),), no_link_local=True),
                LinkSettings(tap, no_link_local=True),
                LinkSettings(link.name, ipv4=(("arp_ignore", 1),)),
            ),
            guest_ipv4=guest4,
            guest_ipv6=guest6,
            nft=_nft(ctx, tap, macs.guest, guest4, guest6, l2_only=l2_only),
        )

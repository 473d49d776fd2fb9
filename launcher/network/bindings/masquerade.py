"""Masquerade binding: the guest sits behind the pod IP with NAT (KubeVirt's layout).

Called through the registry by ``plan``. The NIC's bridge carries the gateway addresses
(first usable address of ``cidr4``/``cidr6``: 10.0.2.1 and fd10:0:2::1 by default); the
guest gets the next one (10.0.2.2, fd10:0:2::2) by DHCPv4 and DHCPv6 + RA. nftables in
the launcher's ``inet`` table DNATs traffic arriving on the pod interface (all ports or
only ``ports``, as sets), DNATs loopback/pod-IP traffic from the pod itself (``kubectl
port-forward``), masquerades the guest's traffic and SNATs loopback sources to the
gateway. The launcher's own ports (status, migration, Istio when injected) are never
DNATed. Hairpin: the guest's own connections to the pod IP (IPv4 and IPv6) on a
forwarded port are DNATed back to it and SNATed to the gateway, so the guest reaches
its own services through the pod IP like any client (a Service IP that lands back on
this pod arrives on the pod interface and takes the ordinary path).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from dhcp.raconfig import RaConfig
from dhcp.v4.config import Dhcp4Config
from dhcp.v6.lease import Config6
from launcher.errors import NetworkError, Problem, SpecError
from launcher.spec.model import BindingKind, Masquerade, Protocol, reserved_port_clashes

from ..model import BridgeLink, LinkSettings, NicContext, NicPlan, link_local_from_mac
from ..names import bridge_name, derived_mac, tap_name
from ..netlink import RTPROT_RA
from ..nftables import NftFragment
from ..sysctl import Sysctl
from .protocol import (
    antispoof_rules,
    dhcp4_config,
    dhcp6_config,
    guest_nic,
    nft_set,
    ra_config,
)

__all__ = ["MasqueradeBinding"]


def _gateway_and_guest(
    cidr: ipaddress.IPv4Network | ipaddress.IPv6Network, field: str
) -> tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, ...]:
    if cidr.num_addresses < 4:
        raise NetworkError(f"masquerade {field} {cidr} is too small for a gateway and a guest")
    gw = ipaddress.ip_interface(f"{cidr.network_address + 1}/{cidr.prefixlen}")
    guest = ipaddress.ip_interface(f"{cidr.network_address + 2}/{cidr.prefixlen}")
    return gw, guest


@dataclass(frozen=True, slots=True)
class _Forwards:
    """Which ports reach the guest: all (no ``ports`` listed) or the listed ones."""

    index: int
    reserved: tuple[int, ...]
    by_proto: dict[Protocol, list[str]]  # "80" or "8000-8100", sorted, no overlaps

    @property
    def all_ports(self) -> bool:
        return not any(self.by_proto.values())

    def sets(self) -> list[str]:
        """The nft sets: the reserved ports and the forwarded ports per protocol."""
        i = self.index
        reserved = nft_set([str(p) for p in self.reserved])
        out = [f"set reserved{i} {{ type inet_service; elements = {reserved} }}"]
        for proto, ports in self.by_proto.items():
            if ports:
                flags = " flags interval;" if any("-" in p for p in ports) else ""
                out.append(
                    f"set {proto.value.lower()}{i} {{ type inet_service;{flags} "
                    f"elements = {nft_set(ports)} }}"
                )
        return out

    def keep_reserved(self) -> str:
        """The rule that keeps the pod's own ports out of every DNAT that follows."""
        return f"meta l4proto {{ tcp, udp }} th dport @reserved{self.index} return"

    def dnat(self, fam: str, daddrs: list[str], guest: str) -> list[str]:
        """DNAT rules sending traffic for ``daddrs`` (family ``ip``/``ip6``) to ``guest``."""
        match = f"{fam} daddr {nft_set(daddrs)}"
        to = f"dnat {fam} to {guest}"
        if self.all_ports:
            icmp = "icmp type echo-request" if fam == "ip" else "icmpv6 type echo-request"
            return [f"{match} meta l4proto {{ tcp, udp, sctp }} {to}", f"{match} {icmp} {to}"]
        return [
            f"{match} {proto.value.lower()} dport @{proto.value.lower()}{self.index} {to}"
            for proto, ports in self.by_proto.items()
            if ports
        ]


def _forwards(ctx: NicContext, binding: Masquerade) -> _Forwards:
    """The NIC's port forwards (ports and port ranges, one interval set per protocol).

    A listed port or range holding a port the pod itself uses is a SpecError (exit 2)
    naming the field. The spec reader refused those already against the default status
    port; this check stays for the status port really configured (``--status-listen``,
    known only to ``plan``/``run``) and for specs built in code.
    """
    reserved = ctx.reserved_ports
    base = ctx.spec.interface_path(ctx.index)
    clashes = reserved_port_clashes(binding.ports, binding.port_ranges, ctx.reserved_uses)
    if clashes:
        raise SpecError([Problem(f"{base}.{where}", message) for where, message in clashes])
    by_proto: dict[Protocol, list[str]] = {}
    for proto in Protocol:
        items = [(p.port, p.port) for p in binding.ports if p.protocol is proto]
        items += [(r.start, r.end) for r in binding.port_ranges if r.protocol is proto]
        by_proto[proto] = [str(a) if a == b else f"{a}-{b}" for a, b in sorted(set(items))]
    return _Forwards(ctx.index, reserved, by_proto)


@dataclass(slots=True)
class _Family:
    """What one address family (IPv4 or IPv6) adds to a masquerade NIC."""

    gateway: ipaddress.IPv4Interface | ipaddress.IPv6Interface
    guest: ipaddress.IPv4Interface | ipaddress.IPv6Interface
    prerouting: list[str] = field(default_factory=list)
    output: list[str] = field(default_factory=list)
    postrouting: list[str] = field(default_factory=list)
    sysctls: list[Sysctl] = field(default_factory=list)
    # net.ipv4.conf.<bridge> values, set through netlink (not pod-level sysctls)
    bridge4: list[tuple[str, int]] = field(default_factory=list)


def _ipv4(ctx: NicContext, binding: Masquerade, fwd: _Forwards, bridge: str) -> _Family:
    link = ctx.pod_link
    pod = f'"{link.name}"'
    gw, guest = _gateway_and_guest(binding.cidr4, "cidr4")
    pod4 = [str(a.ip) for a in link.addresses4]
    hairpin = f'iifname "{bridge}" ip saddr {guest.ip}'
    return _Family(
        gateway=gw,
        guest=guest,
        prerouting=[
            *(f"iifname {pod} {r}" for r in fwd.dnat("ip", pod4, str(guest.ip))),
            *(f"{hairpin} {r}" for r in fwd.dnat("ip", pod4, str(guest.ip))),
        ],
        output=fwd.dnat("ip", ["127.0.0.1", *pod4], str(guest.ip)),
        postrouting=[
            f"oifname {pod} ip saddr {guest.ip} masquerade",
            f'oifname "{bridge}" ip saddr {nft_set(["127.0.0.1", *pod4])} snat ip to {gw.ip}',
            # hairpin: the guest's own connection to the pod IP comes back from the gateway
            f'oifname "{bridge}" ip saddr {guest.ip} ip daddr {guest.ip} snat ip to {gw.ip}',
        ],
        # IPv4 forwarding is decided per input interface: the pod interface (DNATed
        # traffic in) and the bridge (the guest's traffic out), no net.ipv4.ip_forward;
        # route_localnet so DNATed 127.0.0.1 traffic may leave through the bridge
        bridge4=[("forwarding", 1), ("route_localnet", 1)],
    )


def _ipv6(ctx: NicContext, binding: Masquerade, fwd: _Forwards, bridge: str) -> _Family:
    link = ctx.pod_link
    pod = f'"{link.name}"'
    gw, guest = _gateway_and_guest(binding.cidr6, "cidr6")
    pod6 = [str(a.ip) for a in link.addresses6]
    hairpin = f'iifname "{bridge}" ip6 saddr {guest.ip}'
    return _Family(
        gateway=gw,
        guest=guest,
        prerouting=[
            *(f"iifname {pod} {r}" for r in fwd.dnat("ip6", pod6, str(guest.ip))),
            *(f"{hairpin} {r}" for r in fwd.dnat("ip6", pod6, str(guest.ip))),
        ],
        # ::1 cannot be routed off the loopback device (IPv6 has no route_localnet),
        # so port-forward over IPv6 is served through the pod's own address.
        output=fwd.dnat("ip6", pod6, str(guest.ip)),
        postrouting=[
            f"oifname {pod} ip6 saddr {guest.ip} masquerade",
            f'oifname "{bridge}" ip6 saddr {nft_set(pod6)} snat ip6 to {gw.ip}',
            f'oifname "{bridge}" ip6 saddr {guest.ip} ip6 daddr {guest.ip} snat ip6 to {gw.ip}',
        ],
        sysctls=[
            Sysctl("net.ipv6.conf.all.forwarding", "1"),
            # forwarding=1 stops RA processing unless accept_ra=2: the pod keeps the
            # routes it learns from router advertisements
            *(
                [Sysctl(f"net.ipv6.conf.{link.name}.accept_ra", "2")]
                if any(r.proto == RTPROT_RA for r in link.routes if r.dst.version == 6)
                else []
            ),
        ],
    )


def _servers(
    ctx: NicContext,
    binding: Masquerade,
    bridge: str,
    guest_mac: str,
    *,
    v4: _Family | None,
    v6: _Family | None,
    mtu: int,
) -> tuple[Dhcp4Config | None, Config6 | None, RaConfig | None]:
    """DHCPv4 from the IPv4 gateway; DHCPv6 + RA (the bridge is the guest's router)."""
    dhcp4 = dhcp6 = ra = None
    if v4 is not None:
        assert isinstance(v4.guest, ipaddress.IPv4Interface)
        assert isinstance(v4.gateway, ipaddress.IPv4Interface)
        dhcp4 = dhcp4_config(
            ctx,
            interface=bridge,
            server_address=v4.gateway.ip,
            client_mac=guest_mac,
            address=v4.guest,
            router=v4.gateway.ip,
            mtu=mtu,
        )
    if v6 is not None:
        assert isinstance(v6.guest, ipaddress.IPv6Interface)
        dhcp6 = dhcp6_config(ctx, interface=bridge, client_mac=guest_mac, address=v6.guest)
        ra = ra_config(
            ctx, interface=bridge, prefixes=(binding.cidr6,), mtu=mtu, default_router=True
        )
    return dhcp4, dhcp6, ra


class MasqueradeBinding:
    """Plans a masquerade-bound guest NIC."""

    kind = BindingKind.MASQUERADE

    def plan_nic(self, ctx: NicContext) -> NicPlan:
        """The masquerade plan for ``ctx`` (see the module docstring)."""
        binding = ctx.interface.binding
        assert isinstance(binding, Masquerade)
        link = ctx.pod_link
        i = ctx.index
        br = bridge_name(i)
        tap = tap_name(i)
        if not link.addresses4 and not link.addresses6:
            raise NetworkError(f"pod interface {link.name!r} has no IPv4 or global IPv6 address")
        fwd = _forwards(ctx, binding)
        guest_mac = ctx.interface.mac or derived_mac(
            f"guest/{ctx.spec.namespace}/{ctx.spec.name}/{ctx.interface.name}"
        )
        bridge_mac = derived_mac(f"bridge/{link.name}/{link.mac}", avoid=guest_mac)
        v4 = _ipv4(ctx, binding, fwd, br) if link.addresses4 else None
        v6 = _ipv6(ctx, binding, fwd, br) if link.addresses6 else None
        families = [f for f in (v4, v6) if f is not None]
        mtu = ctx.mtu(ipv6=v6 is not None)
        dhcp4, dhcp6, ra = _servers(ctx, binding, br, guest_mac, v4=v4, v6=v6, mtu=mtu)
        guest4 = v4.guest if v4 is not None else None
        guest6 = v6.guest if v6 is not None else None
        assert guest4 is None or isinstance(guest4, ipaddress.IPv4Interface)
        assert guest6 is None or isinstance(guest6, ipaddress.IPv6Interface)
        return NicPlan(
            name=ctx.interface.name,
            index=i,
            binding=self.kind,
            pod_interface=link.name,
            original=link,
            bridge=BridgeLink(
                name=br,
                mac=bridge_mac,
                mtu=mtu,
                # the IPv6 link-local is the RA/DHCPv6 source: the kernel makes none
                # (no_link_local), so it is added without DAD
                addresses=(
                    *(f.gateway for f in families),
                    *(
                        (ipaddress.IPv6Interface(f"{link_local_from_mac(bridge_mac)}/64"),)
                        if v6
                        else ()
                    ),
                ),
            ),
            tap=ctx.tap(tap, br, mtu, guest_mac),
            device=guest_nic(ctx, tap, guest_mac, mtu),
            sysctls=tuple(s for f in families for s in f.sysctls),  # pod-level only
            link_settings=(
                LinkSettings(
                    br, ipv4=tuple(k for f in families for k in f.bridge4), no_link_local=True
                ),
                LinkSettings(tap, no_link_local=True),
                *((LinkSettings(link.name, ipv4=(("forwarding", 1),)),) if v4 is not None else ()),
            ),
            dhcp4=dhcp4,
            dhcp6=dhcp6,
            ra=ra,
            guest_ipv4=guest4,
            guest_ipv6=guest6,
            nft=NftFragment(
                inet_sets=tuple(fwd.sets()),
                prerouting=(
                    f'iifname {{ "{link.name}", "{br}" }} {fwd.keep_reserved()}',
                    *(r for f in families for r in f.prerouting),
                ),
                output=(fwd.keep_reserved(), *(r for f in families for r in f.output)),
                postrouting=tuple(r for f in families for r in f.postrouting),
                bridge_prerouting=antispoof_rules(
                    tap, guest_mac, guest4.ip if guest4 else None, guest6.ip if guest6 else None
                ),
            ),
        )

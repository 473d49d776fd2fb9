"""Masquerade binding: the guest sits behind the pod IP with NAT (KubeVirt's layout).

Called through the registry by ``plan``. The NIC's bridge carries the gateway addresses
(first usable address of ``cidr4``/``cidr6``: 10.0.2.1 and fd10:0:2::1 by default); the
guest gets the next one (10.0.2.2, fd10:0:2::2) by DHCPv4 and DHCPv6 + RA. nftables in
the launcher's ``inet`` table DNATs traffic arriving on the pod interface (all ports or
only ``ports``, as sets), DNATs loopback/pod-IP traffic from the pod itself (``kubectl
port-forward``), masquerades the guest's traffic and SNATs loopback sources to the
gateway. The launcher's own ports (status, migration, Istio when injected) are never
DNATed.
"""

from __future__ import annotations

import ipaddress

from hypervisor.machine import NetDevice
from launcher.errors import NetworkError
from launcher.spec.model import BindingKind, Masquerade, Protocol

from ..names import bridge_name, derived_mac, device_id, tap_name
from ..nftables import NftFragment
from ..plan import (
    BridgeLink,
    Dhcp6Config,
    NicContext,
    NicPlan,
    RaConfig,
    link_local_from_mac,
)
from ..sysctl import Sysctl
from .protocol import antispoof_rules, dhcp4_config, nft_set

__all__ = ["MasqueradeBinding"]


def _gateway_and_guest(
    cidr: ipaddress.IPv4Network | ipaddress.IPv6Network, field: str
) -> tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, ...]:
    if cidr.num_addresses < 4:
        raise NetworkError(f"masquerade {field} {cidr} is too small for a gateway and a guest")
    gw = ipaddress.ip_interface(f"{cidr.network_address + 1}/{cidr.prefixlen}")
    guest = ipaddress.ip_interface(f"{cidr.network_address + 2}/{cidr.prefixlen}")
    return gw, guest


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
        pod = f'"{link.name}"'
        if not link.addresses4 and not link.addresses6:
            raise NetworkError(f"pod interface {link.name!r} has no IPv4 or global IPv6 address")
        reserved = ctx.reserved_ports
        clash = sorted({p.port for p in binding.ports} & set(reserved))
        if clash:
            raise NetworkError(
                f"interface {ctx.interface.name!r} forwards port {clash[0]}, which the pod "
                f"itself uses (reserved: {', '.join(map(str, reserved))})"
            )
        by_proto = {
            proto: sorted({p.port for p in binding.ports if p.protocol is proto})
            for proto in Protocol
        }
        guest_mac = ctx.interface.mac or derived_mac(
            f"guest/{ctx.spec.namespace}/{ctx.spec.name}/{ctx.interface.name}"
        )
        bridge_mac = derived_mac(f"bridge/{link.name}/{link.mac}", avoid=guest_mac)
        bridge_ll = link_local_from_mac(bridge_mac)
        resolv = ctx.pod.resolv
        mtu = link.mtu

        reserved_set = nft_set([str(p) for p in reserved])
        sets = [f"set reserved{i} {{ type inet_service; elements = {reserved_set} }}"]
        for proto, ports in by_proto.items():
            if ports:
                name = f"{proto.value.lower()}{i}"
                sets.append(
                    f"set {name} {{ type inet_service; elements = "
                    f"{nft_set([str(p) for p in ports])} }}"
                )
        forward_all = not binding.ports
        pre: list[str] = []
        out: list[str] = []
        post: list[str] = []
        sysctls: list[Sysctl] = [Sysctl(f"net.ipv6.conf.{br}.accept_dad", "0")]
        addresses: list[ipaddress.IPv4Interface | ipaddress.IPv6Interface] = []
        pre.append(f"iifname {pod} meta l4proto {{ tcp, udp }} th dport @reserved{i} return")
        out.append(f"meta l4proto {{ tcp, udp }} th dport @reserved{i} return")

        def dnat_rules(fam: str, daddrs: list[str], guest: str) -> list[str]:
            match = f"{fam} daddr {nft_set(daddrs)}"
            to = f"dnat {fam} to {guest}"
            if forward_all:
                icmp = "icmp type echo-request" if fam == "ip" else "icmpv6 type echo-request"
                return [f"{match} meta l4proto {{ tcp, udp, sctp }} {to}", f"{match} {icmp} {to}"]
            return [
                f"{match} {proto.value.lower()} dport @{proto.value.lower()}{i} {to}"
                for proto, ports in by_proto.items()
                if ports
            ]

        dhcp4 = dhcp6 = ra = None
        guest4 = guest6 = None
        if link.addresses4:
            gw4, g4 = _gateway_and_guest(binding.cidr4, "cidr4")
            assert isinstance(gw4, ipaddress.IPv4Interface)
            assert isinstance(g4, ipaddress.IPv4Interface)
            guest4 = g4
            addresses.append(gw4)
            pod4 = [str(a.ip) for a in link.addresses4]
            pre += [f"iifname {pod} {r}" for r in dnat_rules("ip", pod4, str(g4.ip))]
            out += dnat_rules("ip", ["127.0.0.1", *pod4], str(g4.ip))
            post += [
                f"oifname {pod} ip saddr {g4.ip} masquerade",
                f'oifname "{br}" ip saddr {nft_set(["127.0.0.1", *pod4])} snat ip to {gw4.ip}',
            ]
            sysctls += [
                Sysctl("net.ipv4.ip_forward", "1"),
                Sysctl(f"net.ipv4.conf.{br}.route_localnet", "1"),
            ]
            dhcp4 = dhcp4_config(
                ctx,
                interface=br,
                server_address=gw4.ip,
                client_mac=guest_mac,
                address=g4,
                routers=(gw4.ip,),
                mtu=mtu,
            )
        if link.addresses6:
            gw6, g6 = _gateway_and_guest(binding.cidr6, "cidr6")
            assert isinstance(gw6, ipaddress.IPv6Interface)
            assert isinstance(g6, ipaddress.IPv6Interface)
            guest6 = g6
            addresses.append(gw6)
            pod6 = [str(a.ip) for a in link.addresses6]
            pre += [f"iifname {pod} {r}" for r in dnat_rules("ip6", pod6, str(g6.ip))]
            # ::1 cannot be routed off the loopback device (IPv6 has no route_localnet),
            # so port-forward over IPv6 is served through the pod's own address.
            out += dnat_rules("ip6", pod6, str(g6.ip))
            post += [
                f"oifname {pod} ip6 saddr {g6.ip} masquerade",
                f'oifname "{br}" ip6 saddr {nft_set(pod6)} snat ip6 to {gw6.ip}',
            ]
            sysctls += [
                Sysctl("net.ipv6.conf.all.forwarding", "1"),
                # forwarding=1 stops RA processing unless accept_ra=2 (pod routes from RA)
                Sysctl(f"net.ipv6.conf.{link.name}.accept_ra", "2"),
            ]
            dhcp6 = Dhcp6Config(
                interface=br,
                server_address=bridge_ll,
                client_mac=guest_mac,
                address=g6.ip,
                dns=resolv.nameservers6,
                search=resolv.search,
                hostname=ctx.hostname,
                preferred_lifetime_s=ctx.options.lease_time_s,
                valid_lifetime_s=ctx.options.lease_time_s,
            )
            ra = RaConfig(
                interface=br,
                source=bridge_ll,
                source_mac=bridge_mac,
                router_lifetime_s=ctx.options.router_lifetime_s,
                prefixes=(binding.cidr6,),
                mtu=mtu,
                rdnss=resolv.nameservers6,
                dnssl=resolv.search,
            )
        anti = antispoof_rules(
            tap, guest_mac, guest4.ip if guest4 else None, guest6.ip if guest6 else None
        )
        return NicPlan(
            name=ctx.interface.name,
            index=i,
            binding=self.kind,
            pod_interface=link.name,
            original=link,
            bridge=BridgeLink(name=br, mac=bridge_mac, mtu=mtu, addresses=tuple(addresses)),
            tap=ctx.tap(tap, br, mtu, guest_mac),
            device=NetDevice(
                id=device_id(i),
                tap=tap,
                mac=guest_mac,
                mtu=mtu,
                queues=ctx.queues,
                pci_address=ctx.interface.pci_address,
                boot_order=ctx.interface.boot_order,
                model=ctx.interface.model,
            ),
            sysctls=tuple(sysctls),
            dhcp4=dhcp4,
            dhcp6=dhcp6,
            ra=ra,
            guest_ipv4=guest4,
            guest_ipv6=guest6,
            nft=NftFragment(
                inet_sets=tuple(sets),
                prerouting=tuple(pre),
                output=tuple(out),
                postrouting=tuple(post),
                bridge_prerouting=anti,
            ),
        )

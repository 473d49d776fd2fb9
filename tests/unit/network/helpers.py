"""Builders for pure network tests: PodState and VmSpec values without any netns."""

from __future__ import annotations

import ipaddress

from launcher.network.discover import PodLink, PodState
from launcher.network.netlink import Route
from launcher.network.resolv import Resolv
from launcher.spec.model import (
    Binding,
    Bridge,
    Interface,
    Network,
    PodNetwork,
    SourceShape,
    VmSpec,
)

POD_MAC = "0a:58:0a:f4:01:05"


def pod_link(
    name: str = "eth0",
    *,
    v4: str | None = "10.244.1.5/24",
    v6: str | None = "fd00:10:244:1::5/64",
    gw4: str | None = "10.244.1.1",
    gw6: str | None = "fe80::1",
    mac: str = POD_MAC,
    mtu: int = 1450,
    extra_routes: tuple[Route, ...] = (),
) -> PodLink:
    routes: list[Route] = list(extra_routes)
    if gw4:
        routes.append(Route(ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_address(gw4), name))
    if gw6:
        routes.append(Route(ipaddress.ip_network("::/0"), ipaddress.ip_address(gw6), name))
    return PodLink(
        name=name,
        mac=mac,
        mtu=mtu,
        kind="veth",
        addresses4=(ipaddress.IPv4Interface(v4),) if v4 else (),
        addresses6=(ipaddress.IPv6Interface(v6),) if v6 else (),
        routes=tuple(routes),
    )


def pod_state(*links: PodLink) -> PodState:
    return PodState(
        links=links or (pod_link(),),
        resolv=Resolv(
            nameservers=(
                ipaddress.ip_address("10.96.0.10"),
                ipaddress.ip_address("fd00:10:96::a"),
            ),
            search=("ns.svc.cluster.local", "svc.cluster.local", "cluster.local"),
        ),
        hostname="vm-pod",
    )


def vm_spec(binding: Binding | None = None, **kw: object) -> VmSpec:
    iface = Interface(name="default", binding=binding or Bridge())
    return VmSpec(
        shape=SourceShape.VIRTINK,
        name="vm1",
        namespace="ns",
        interfaces=(iface,),
        networks=(Network(name="default", source=PodNetwork()),),
        **kw,  # type: ignore[arg-type]
    )

"""The network plan: a PURE function from (VmSpec, PodState, PlanOptions) to frozen data.

Called by the composition (:func:`launcher.machine.compose`) and by ``virt-launcher
plan`` (which prints ``NetworkPlan.to_json()``). Each guest NIC is planned by its
binding module (see ``bindings``); the plan's types live in :mod:`.model` (re-exported
here), so the bindings depend on the types and this module on the bindings. This module
assembles the whole plan: links to create, MAC changes, sysctls, the nftables
document, the DHCPv4/DHCPv6/RA configuration per NIC (the ``dhcp`` package's own config
types, which its servers consume as is: what ``plan`` prints is what is served) and the
guest device per NIC (``devices``; ``launcher.machine`` makes the hypervisor's device from
it). Nothing here touches the system.

Sysctls, the contract: ``NetworkPlan.sysctls`` (and each ``NicPlan.sysctls``) holds
EXACTLY the namespaced ``net.*`` sysctls that must be set at pod level for this plan to
work, each with the value it needs — what ``virt-launcher manifest`` puts into the Pod's
``spec.securityContext.sysctls`` and what ``apply`` checks first (reads; writes only where
``/proc/sys`` is writable; otherwise a NetworkError naming the sysctl and that field).
Nothing per-interface that netlink can set is a sysctl: those are ``NicPlan.link_settings``
(``net.ipv4.conf.<if>.*`` through ``IFLA_INET_CONF``, the IPv6 link-local through
``IFLA_INET6_ADDR_GEN_MODE``), and the launcher's IPv6 addresses are added without DAD.
What stays a sysctl is what the kernel offers no netlink for: ``net.ipv6.conf.all.
forwarding`` (IPv6 forwarding is one switch per netns before Linux 6.17) and a pod
interface's ``net.ipv6.conf.<if>.accept_ra`` (IFLA_INET6_CONF is read-only).
"""

from __future__ import annotations

from collections.abc import Collection

from launcher.errors import NetworkError
from launcher.spec.model import InterfaceState, VmSpec

from .bindings import Binding, binding_for, passthrough_for
from .discover import PodState
from .model import (
    DEFAULT_STATUS_PORT,
    ISTIO_PORTS,
    MIGRATION_PORTS,
    BridgeLink,
    LinkSettings,
    NetworkPlan,
    NicContext,
    NicPlan,
    PlanOptions,
    PodPort,
    TapLink,
    link_local_from_mac,
    served_options,
)
from .multus import PassthroughContext, PassthroughNic, map_interfaces
from .nftables import render
from .sysctl import Sysctl

__all__ = [
    "NetworkPlan",
    "PlanOptions",
    "plan",
    "BridgeLink",
    "LinkSettings",
    "NicContext",
    "NicPlan",
    "PodPort",
    "TapLink",
    "DEFAULT_STATUS_PORT",
    "ISTIO_PORTS",
    "MIGRATION_PORTS",
    "link_local_from_mac",
    "plan_interface",
    "served_options",
]

_DEFAULTS = PlanOptions()


def _plan_nic(binding: Binding, ctx: NicContext) -> NicPlan:
    """``binding``'s plan for one NIC; a DHCP/RA value its server would refuse is a
    NetworkError here, before anything in the pod changes."""
    try:
        return binding.plan_nic(ctx)
    except ValueError as err:
        raise NetworkError(
            f"the DHCP configuration planned for interface {ctx.interface.name!r} is invalid: {err}"
        ) from err


def plan(spec: VmSpec, pod: PodState, options: PlanOptions = _DEFAULTS) -> NetworkPlan:
    """Plan every guest NIC of ``spec`` against ``pod``; pure, raises NetworkError."""

    nics: list[NicPlan] = []
    passthrough: list[PassthroughNic] = []
    used: dict[str, str] = {}
    mappings = map_interfaces(
        spec, options.podinfo, (lk.name for lk in pod.links), options.pod_interface
    )
    index = 0
    for position, iface in enumerate(
        i for i in spec.interfaces if i.state is not InterfaceState.ABSENT
    ):
        pt = passthrough_for(iface)
        if pt is not None:
            passthrough.append(
                pt.plan_device(
                    PassthroughContext(
                        spec=spec,
                        interface=iface,
                        index=position,
                        mapping=mappings[iface.name],
                        mappings=mappings,
                        podinfo=options.podinfo,
                        host=options.host,
                    )
                )
            )
            continue
        binding = binding_for(iface)
        pod_if = mappings[iface.name].pod_interface
        if pod_if is None:
            raise NetworkError(
                f"network {iface.network!r}: its Multus network-status entry names no pod "
                "interface, so the launcher has nothing to connect the guest NIC to"
            )
        if pod_if in used:
            raise NetworkError(
                f"interfaces {used[pod_if]!r} and {iface.name!r} both use pod interface {pod_if!r}"
            )
        used[pod_if] = iface.name
        ctx = NicContext(
            spec=spec,
            interface=iface,
            index=index,
            pod_link=pod.link(pod_if),
            pod=pod,
            options=options,
        )
        nics.append(_plan_nic(binding, ctx))
        index += 1
    sysctls: dict[str, Sysctl] = {}
    for nic in nics:
        for s in nic.sysctls:
            sysctls[s.key] = s
    return NetworkPlan(
        nics=tuple(nics),
        sysctls=tuple(sysctls.values()),
        nftables=render(n.nft for n in nics),
        passthrough=tuple(passthrough),
        interfaces=tuple(mappings[i.name] for i in spec.interfaces if i.name in mappings),
    )


def plan_interface(
    spec: VmSpec,
    pod: PodState,
    options: PlanOptions,
    name: str,
    *,
    avoid: Collection[int] = (),
    at: int | None = None,
) -> NicPlan | PassthroughNic:
    """Interface ``name``'s part of the whole plan of ``spec`` (hot plug: the whole spec is
    planned, so it is validated as a whole). When its position-derived index (tap, bridge,
    device id) is among ``avoid`` (the running NICs'), it is planned at the lowest free
    index instead; ``at`` plans it at exactly that index (the link refresh re-plans a
    running NIC with its own names). NetworkError when the new plan has no such
    interface."""

    planned = plan(spec, pod, options)
    for nic in planned.nics:
        if nic.name != name:
            continue
        if at is None and nic.index not in avoid:
            return nic
        free = at if at is not None else next(i for i in range(len(avoid) + 1) if i not in avoid)
        if free == nic.index:
            return nic
        iface = next(i for i in spec.interfaces if i.name == name)
        ctx = NicContext(
            spec=spec,
            interface=iface,
            index=free,
            pod_link=pod.link(nic.pod_interface),
            pod=pod,
            options=options,
        )
        return _plan_nic(binding_for(iface), ctx)
    for pt in planned.passthrough:
        if pt.name == name:
            return pt
    raise NetworkError(f"interface {name!r} is not in the new network plan")

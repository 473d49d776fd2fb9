"""SR-IOV binding: a VF the CNI/device plugin gave the pod, passed to the guest with VFIO.

Called through the passthrough registry by ``plan``. The VF's PCI address comes from the
network's Multus network-status ``device-info.pci.pci-address``; without one, from the
device plugin's ``PCIDEVICE_<RESOURCE>`` variable (the resource KubeVirt names in
``KUBEVIRT_RESOURCE_NAME_<network>``, or the only PCIDEVICE variable there is), handing
out its addresses in spec order and skipping those network-status already assigned.
The VF is checked in sysfs (``launcher.network.sysfs.check_vf``) and becomes a
:class:`~launcher.network.devices.GuestVfio` at the spec's guest PCI address, if any. The
guest MAC is what the CNI programmed on the VF (network-status ``mac``), else the
spec's: VFIO cannot change it from the hypervisor.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass

from launcher.errors import NetworkError, PodInfoError
from launcher.podinfo import PodInfo, resource_env_name
from launcher.spec.model import BindingKind, InterfaceState, VmSpec

from ..devices import GuestVfio
from ..multus import InterfaceMapping, PassthroughContext, PassthroughNic
from ..sysfs import check_vf

__all__ = ["CniFields", "SriovBinding", "allocate_vfs", "passthrough_fields"]

log = logging.getLogger(__name__)


def allocate_vfs(
    spec: VmSpec, mappings: dict[str, InterfaceMapping], podinfo: PodInfo | None
) -> dict[str, tuple[str, str]]:
    """SR-IOV interface name → (PCI address, where it came from), for every SR-IOV NIC.

    Interfaces with no address anywhere are left out (the binding reports them).
    """
    out: dict[str, tuple[str, str]] = {}
    sriov = [
        i
        for i in spec.interfaces
        if i.binding.kind is BindingKind.SRIOV and i.state is not InterfaceState.ABSENT
    ]
    for iface in sriov:
        status = mappings[iface.name].status if iface.name in mappings else None
        info = status.device_info if status is not None else None
        if info is not None and info.pci_address is not None:
            out[iface.name] = (info.pci_address, "network-status device-info")
    if podinfo is None:
        return out
    taken = {addr for addr, _ in out.values()}
    pools = dict(podinfo.pci_devices)
    for iface in sriov:
        if iface.name in out:
            continue
        resource = podinfo.resource_for(iface.network)
        if resource is not None:
            key = resource_env_name(resource)
        elif len(pools) == 1:
            key = next(iter(pools))
        else:
            continue
        if key not in pools:
            continue
        free = [a for a in pools[key] if a not in taken]
        if free:
            taken.add(free[0])
            out[iface.name] = (free[0], f"environment variable PCIDEVICE_{key}")
    return out


@dataclass(frozen=True, slots=True)
class CniFields:
    """What the CNI reported for a passthrough NIC (network-status), for cloud-init."""

    mac: str | None = None
    ips: tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, ...] = ()
    gateways: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...] = ()
    nameservers: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...] = ()
    search: tuple[str, ...] = ()
    mtu: int | None = None


def passthrough_fields(mapping: InterfaceMapping) -> CniFields:
    """The network-status entry of ``mapping`` as :class:`CniFields` (empty without one).

    Multus writes bare addresses: an address without a prefix length (/32, /128) is
    given /24 or /64, the usual subnet, so the guest can reach its neighbours. Gateways
    are kept only for the entry Multus marks ``default``.
    """
    st = mapping.status
    if st is None:
        return CniFields()
    ips: list[ipaddress.IPv4Interface | ipaddress.IPv6Interface] = []
    for ip in st.ips:
        if ip.network.prefixlen == ip.max_prefixlen:
            ips.append(ipaddress.ip_interface(f"{ip.ip}/{24 if ip.version == 4 else 64}"))
        else:
            ips.append(ip)
    return CniFields(
        mac=st.mac,
        ips=tuple(ips),
        gateways=st.gateway if st.default else (),
        nameservers=st.dns.nameservers,
        search=st.dns.search,
        mtu=st.mtu,
    )


class SriovBinding:
    """Plans an SR-IOV VF passed through with VFIO."""

    kind = BindingKind.SRIOV

    def plan_device(self, ctx: PassthroughContext) -> PassthroughNic:
        """The VFIO device for ``ctx`` (see the module docstring)."""
        iface = ctx.interface
        network = ctx.mapping.network
        if ctx.mapping.network_name is None:
            raise NetworkError(
                f"interface {iface.name!r} uses the sriov binding on the pod network: an "
                "SR-IOV VF comes from a Multus network (networks[].multus.networkName)"
            )
        found = allocate_vfs(ctx.spec, ctx.mappings, ctx.podinfo).get(iface.name)
        if found is None:
            where = (
                "its network-status entry has no device-info.pci.pci-address"
                if ctx.mapping.status is not None
                else "there is no Multus network-status"
            )
            raise PodInfoError(
                f"network {network!r} ({ctx.mapping.network_name}): no PCI address for the "
                f"SR-IOV VF: {where} and no PCIDEVICE_<RESOURCE> variable holds a free "
                "address; mount the pod annotations (downward API) at --podinfo or request "
                "the network's SR-IOV resource"
            )
        address, source = found
        vf = check_vf(address, network, ctx.host)
        cni = passthrough_fields(ctx.mapping)
        cni_mac = cni.mac
        mac = cni_mac or iface.mac
        if iface.mac and cni_mac and iface.mac != cni_mac:
            log.warning(
                "interface %r: the CNI programmed MAC %s on VF %s, not the spec's %s; the "
                "guest sees %s",
                iface.name,
                cni_mac,
                address,
                iface.mac,
                cni_mac,
                extra={"event": "sriov-mac-mismatch", "interface": iface.name},
            )
        return PassthroughNic(
            name=iface.name,
            binding=self.kind,
            network=network,
            mapping=ctx.mapping,
            device=GuestVfio(
                id=f"hostdev{ctx.index}",
                sysfs_path=vf.sysfs_path,
                guest_pci_address=iface.pci_address,
            ),
            device_source=source,
            mac=mac,
            ips=cni.ips,
            gateways=cni.gateways,
            nameservers=cni.nameservers,
            search=cni.search,
            mtu=cni.mtu,
        )

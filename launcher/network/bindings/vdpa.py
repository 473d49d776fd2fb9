"""vDPA binding: a vhost-vdpa device node handed to the hypervisor with ``numQueues``/``iommu``.

Called through the passthrough registry by ``plan``. The device path comes from the
network's Multus network-status ``device-info.vdpa.path`` (``/dev/vhost-vdpa-N``); a
device bound to ``virtio_vdpa`` (driver ``virtio``) cannot be given to a VM. The node
is checked to exist in the pod (``launcher.network.sysfs.check_vdpa``).
"""

from __future__ import annotations

from launcher.errors import NetworkError, PodInfoError
from launcher.spec.model import BindingKind, Vdpa

from ..devices import GuestVdpa
from ..multus import PassthroughContext, PassthroughNic
from ..sysfs import check_vdpa
from .sriov import passthrough_fields

__all__ = ["VdpaBinding"]


class VdpaBinding:
    """Plans a vhost-vdpa NIC."""

    kind = BindingKind.VDPA

    def plan_device(self, ctx: PassthroughContext) -> PassthroughNic:
        """The vDPA device for ``ctx`` (see the module docstring)."""
        iface = ctx.interface
        binding = iface.binding
        assert isinstance(binding, Vdpa)
        network = ctx.mapping.network
        if ctx.mapping.network_name is None:
            raise NetworkError(
                f"interface {iface.name!r} uses the vdpa binding on the pod network: a vDPA "
                "device comes from a Multus network (networks[].multus.networkName)"
            )
        status = ctx.mapping.status
        info = status.device_info if status is not None else None
        if info is None or info.type != "vdpa" or not info.vdpa_path:
            what = (
                "there is no Multus network-status"
                if status is None
                else "its network-status entry has no device-info.vdpa.path"
                if info is None or info.type == "vdpa"
                else f"its network-status device-info is of type {info.type!r}, not vdpa"
            )
            raise PodInfoError(
                f"network {network!r} ({ctx.mapping.network_name}): no vhost-vdpa device: "
                f"{what}; mount the pod annotations (downward API) at --podinfo and use a "
                "vDPA-capable CNI (sriov-cni with a vdpa device plugin resource)"
            )
        if info.vdpa_driver not in (None, "vhost"):
            raise NetworkError(
                f"network {network!r}: vDPA device {info.vdpa_path} uses driver "
                f"{info.vdpa_driver!r}: bind it to vhost_vdpa (vdpaType: vhost in the "
                "SriovNetworkNodePolicy) so the hypervisor can open it"
            )
        node = check_vdpa(info.vdpa_path, network, ctx.host)
        cni = passthrough_fields(ctx.mapping)
        return PassthroughNic(
            name=iface.name,
            binding=self.kind,
            network=network,
            mapping=ctx.mapping,
            device=GuestVdpa(
                id=f"vdpa{ctx.index}",
                path=node.path,
                num_queues=binding.num_queues,
                iommu=binding.iommu,
            ),
            device_source="network-status device-info",
            mac=cni.mac or iface.mac,
            ips=cni.ips,
            gateways=cni.gateways,
            nameservers=cni.nameservers,
            search=cni.search,
            mtu=cni.mtu,
        )

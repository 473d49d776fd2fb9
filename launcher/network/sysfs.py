"""Read-only checks that a passthrough device is usable: a VF on vfio-pci, a vhost-vdpa node.

Called by the SR-IOV and vDPA bindings while planning (so ``virt-launcher plan`` shows
the same errors ``run`` would hit). Everything is read below a host root (``/`` in a
pod, a fake tree in tests) with the kernel's layout::

    sys/bus/pci/devices/<addr>   -> ../../../devices/pci0000:00/0000:00:03.0/<addr>
    sys/devices/.../<addr>/physfn      -> ../<pf addr>      (present only on a VF)
    sys/devices/.../<addr>/driver      -> ../../../../bus/pci/drivers/vfio-pci
    sys/devices/.../<addr>/iommu_group -> ../../../../kernel/iommu_groups/<n>
    sys/kernel/iommu_groups/<n>/devices/<addr> -> ../../../../devices/.../<addr>
    dev/vfio/vfio, dev/vfio/<n>, dev/vhost-vdpa-<k>

Each failure is one :class:`NetworkError` sentence saying what is wrong and what to do.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from launcher.errors import NetworkError

__all__ = [
    "VFIO_ALLOWED_DRIVERS",
    "HostPaths",
    "VdpaCheck",
    "VfCheck",
    "check_vdpa",
    "check_vf",
]

# The drivers the kernel accepts beside vfio-pci in a group handed to VFIO
# (vfio_dev_driver_allowed): pci-stub, and pcieport for bridges; unbound is fine too.
VFIO_ALLOWED_DRIVERS = frozenset({"vfio-pci", "pci-stub", "pcieport"})
_VDPA_PATH = re.compile(r"^/dev/vhost-vdpa-\d+$")


@dataclass(frozen=True, slots=True)
class HostPaths:
    """Where sysfs and /dev are: ``/`` in a pod, a temp dir in tests."""

    root: Path = Path("/")

    @property
    def pci_devices(self) -> Path:
        """``/sys/bus/pci/devices``."""
        return self.root / "sys/bus/pci/devices"

    def dev(self, path: str) -> Path:
        """An absolute /dev path below the root."""
        return self.root / PurePosixPath(path).relative_to("/")


@dataclass(frozen=True, slots=True)
class VfCheck:
    """A VF that passed every check."""

    address: str
    sysfs_path: str  # what the hypervisor gets: <root>/sys/bus/pci/devices/<addr>
    physfn: str  # the PF's PCI address
    iommu_group: str
    group_devices: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class VdpaCheck:
    """A vhost-vdpa device node that exists."""

    path: str  # as the hypervisor opens it (<root>/dev/vhost-vdpa-N)


def _link_name(path: Path) -> str | None:
    try:
        return PurePosixPath(os.readlink(path)).name
    except FileNotFoundError:
        return None
    except OSError as err:
        raise NetworkError(f"cannot read link {path}: {err.strerror}") from err


def check_vf(address: str, network: str, host: HostPaths = HostPaths()) -> VfCheck:
    """Check that ``address`` is a VF bound to vfio-pci whose IOMMU group VFIO can take.

    ``network`` names the spec network in the error messages.
    """
    what = f"network {network!r}: PCI device {address}"
    dev = host.pci_devices / address
    if not dev.exists():
        raise NetworkError(
            f"{what} does not exist on this node ({dev} is missing): the device plugin or "
            "the network-status names a VF the node does not have; check the SR-IOV "
            "resource and the VFs created on the PF"
        )
    physfn = _link_name(dev / "physfn")
    if physfn is None:
        raise NetworkError(
            f"{what} is not an SR-IOV virtual function ({dev}/physfn is missing): pass a "
            "VF allocated by the SR-IOV device plugin, not a PF or another device"
        )
    driver = _link_name(dev / "driver")
    if driver != "vfio-pci":
        bound = f"bound to {driver}" if driver else "not bound to any driver"
        raise NetworkError(
            f"{what} is {bound}, not vfio-pci: set deviceType: vfio-pci in the "
            "SriovNetworkNodePolicy (or bind it with driverctl set-override "
            f"{address} vfio-pci)"
        )
    group = _link_name(dev / "iommu_group")
    if group is None:
        raise NetworkError(
            f"{what} has no IOMMU group ({dev}/iommu_group is missing): enable the IOMMU "
            "on the node (intel_iommu=on or amd_iommu=on, and VT-d/AMD-Vi in the firmware)"
        )
    container = host.dev("/dev/vfio/vfio")
    if not container.exists():
        raise NetworkError(
            f"{what}: {container} is missing in the pod: the SR-IOV device plugin mounts "
            "it with the VF; request the network's resource in the pod"
        )
    node = host.dev(f"/dev/vfio/{group}")
    if not node.exists():
        raise NetworkError(
            f"{what} is in IOMMU group {group} but {node} is missing in the pod: the "
            "device plugin did not mount it; request the network's resource in the pod "
            "and check the plugin is in vfio-pci mode"
        )
    members_dir = dev / "iommu_group" / "devices"
    try:
        members = sorted(p.name for p in members_dir.iterdir())
    except OSError as err:
        raise NetworkError(f"{what}: cannot list {members_dir}: {err.strerror}") from err
    for member in members:
        if member == address:
            continue
        other = _link_name(members_dir / member / "driver")
        if other is not None and other not in VFIO_ALLOWED_DRIVERS:
            raise NetworkError(
                f"{what} shares IOMMU group {group} with {member}, which is bound to "
                f"{other}, so VFIO cannot give the group to the VM: bind {member} to "
                "vfio-pci as well, or enable ACS so the VF gets its own group"
            )
    return VfCheck(
        address=address,
        sysfs_path=str(dev),
        physfn=physfn,
        iommu_group=group,
        group_devices=tuple(members),
    )


def check_vdpa(path: str, network: str, host: HostPaths = HostPaths()) -> VdpaCheck:
    """Check that ``path`` names a vhost-vdpa device node present in the pod."""
    what = f"network {network!r}: vDPA device {path}"
    if not _VDPA_PATH.match(path):
        raise NetworkError(
            f"{what} is not a /dev/vhost-vdpa-N path: the vDPA device must be bound to "
            "vhost_vdpa (not virtio_vdpa) so the hypervisor can open it"
        )
    node = host.dev(path)
    if not node.exists():
        raise NetworkError(
            f"{what} is missing in the pod ({node}): the vDPA device plugin did not mount "
            "it; request the network's resource in the pod"
        )
    if node.is_dir():
        raise NetworkError(f"{what} is a directory ({node}), not a device node")
    return VdpaCheck(path=str(node))

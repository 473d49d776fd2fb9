"""The guest devices the network plan decides on: a tap NIC, a VFIO function, a vDPA device.

Made by the bindings (``bindings/``) and ``multus``; read by ``launcher.compose``, which
turns them into the hypervisor's device types (``hypervisor.machine``) for the machine
config and for hot plug. The plan describes the guest's side of each NIC in its own terms
so that the network package does not depend on the hypervisor package (dependencies
follow the data flow: spec → network plan → machine config).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["GuestNic", "GuestVfio", "GuestVdpa"]


@dataclass(frozen=True, slots=True)
class GuestNic:
    """A guest NIC backed by a tap in the pod netns."""

    id: str  # stable device id, e.g. "net0"; used for hot unplug
    tap: str  # tap interface name in the pod netns
    mac: str  # guest MAC, lower-case colon form
    mtu: int
    queues: int = 1  # queue pairs; >1 means a multiqueue tap
    pci_address: str | None = None  # guest PCI address if the spec pins one
    boot_order: int | None = None
    model: str = "virtio"
    link_up: bool = True  # False: the guest NIC starts with no carrier (spec state: down)


@dataclass(frozen=True, slots=True)
class GuestVfio:
    """A PCI function (SR-IOV VF) passed through with VFIO."""

    id: str
    sysfs_path: str  # /sys/bus/pci/devices/0000:58:01.2
    guest_pci_address: str | None = None


@dataclass(frozen=True, slots=True)
class GuestVdpa:
    """A vhost-vdpa device."""

    id: str
    path: str  # /dev/vhost-vdpa-0
    num_queues: int | None = None
    iommu: bool = False

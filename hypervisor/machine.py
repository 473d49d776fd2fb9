"""What a hypervisor is asked to run: a frozen, hypervisor-neutral machine description.

The launcher's composition root builds a :class:`MachineConfig` from the ``VmSpec`` and
the ``NetworkPlan`` (guest NICs, taps, VFIO and vDPA devices, resolved disk paths); the
QEMU argv builder and the cloud-hypervisor config builder each translate it into their
own form. Nothing here knows about Kubernetes manifests or netlink.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "DiskImage",
    "KernelBoot",
    "MachineConfig",
    "NetDevice",
    "VdpaDevice",
    "VfioDevice",
    "VmState",
]


class VmState(enum.StrEnum):
    """Lifecycle state of the VM as the supervisor tracks it."""

    CREATED = "Created"
    RUNNING = "Running"
    PAUSED = "Paused"
    SHUTDOWN = "Shutdown"
    FAILED = "Failed"


@dataclass(frozen=True, slots=True)
class NetDevice:
    """A virtio-net NIC backed by a tap in the pod netns."""

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
class VfioDevice:
    """A PCI device (SR-IOV VF) passed through with VFIO."""

    id: str
    sysfs_path: str  # /sys/bus/pci/devices/0000:58:01.2
    guest_pci_address: str | None = None


@dataclass(frozen=True, slots=True)
class VdpaDevice:
    """A vhost-vdpa device."""

    id: str
    path: str  # /dev/vhost-vdpa-0
    num_queues: int | None = None
    iommu: bool = False


@dataclass(frozen=True, slots=True)
class DiskImage:
    """A disk image file or block device, already resolved to a path.

    ``backing`` is set for a copy-on-write overlay (a containerDisk): ``path`` is then a
    writable qcow2 file whose header names ``backing`` (format ``backing_format``), which
    the VMM opens read-only and never writes.
    """

    id: str
    path: str
    format: str = "raw"  # "raw" or "qcow2"
    read_only: bool = False
    cdrom: bool = False
    boot_order: int | None = None
    backing: str | None = None
    backing_format: str | None = None  # "raw" or "qcow2"


@dataclass(frozen=True, slots=True)
class KernelBoot:
    """Direct kernel boot with resolved file paths."""

    kernel: str
    initrd: str | None = None
    cmdline: str = ""


@dataclass(frozen=True, slots=True)
class MachineConfig:
    """Everything a hypervisor needs to boot the guest."""

    name: str
    vcpus: int
    memory_bytes: int
    kernel: KernelBoot | None = None
    firmware: str | None = None  # path to firmware (OVMF / hypervisor-fw) when not kernel boot
    disks: tuple[DiskImage, ...] = ()
    nets: tuple[NetDevice, ...] = ()
    vfio: tuple[VfioDevice, ...] = ()
    vdpa: tuple[VdpaDevice, ...] = ()
    hotplug_ports: int = 4  # free PCIe root ports reserved for hot plug (QEMU)

"""Hypervisor adapters: a neutral machine description, QEMU (QMP) and cloud-hypervisor (REST)."""

from hypervisor.machine import (
    DiskImage,
    KernelBoot,
    MachineConfig,
    NetDevice,
    VdpaDevice,
    VfioDevice,
    VmState,
)

__all__ = [
    "MachineConfig",
    "VmState",
    "NetDevice",
    "DiskImage",
    "KernelBoot",
    "VfioDevice",
    "VdpaDevice",
]

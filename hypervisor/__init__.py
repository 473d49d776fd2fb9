"""Hypervisor adapters: a neutral machine description, QEMU (QMP) and cloud-hypervisor (REST).

The composition root builds a :class:`MachineConfig`, picks an adapter
(``hypervisor.qemu.Qemu`` or ``hypervisor.cloud_hypervisor``'s adapter) and drives it only
through the :class:`Hypervisor` protocol.
"""

from hypervisor.base import ExitInfo, Hypervisor, LifecycleEvent
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
    "Hypervisor",
    "MachineConfig",
    "VmState",
    "ExitInfo",
    "LifecycleEvent",
    "NetDevice",
    "DiskImage",
    "KernelBoot",
    "VfioDevice",
    "VdpaDevice",
]

"""QEMU adapter: argv builder, accelerator probe, QMP session and the Hypervisor implementation.

The composition root calls :func:`choose_accel` once, then creates a :class:`Qemu` (the
``Hypervisor`` protocol of ``hypervisor.base``); :func:`build_argv` is the pure argv
builder behind it, exported for ``virt-launcher plan`` and tests.
"""

from hypervisor.qemu.adapter import Qemu, describe_exit, map_event, serial_to_stdout
from hypervisor.qemu.argv import QemuRuntime, build_argv
from hypervisor.qemu.probe import AccelChoice, choose_accel
from hypervisor.qemu.qmp import QmpEvent, QmpGoneError, QmpSession

__all__ = [
    "Qemu",
    "choose_accel",
    "serial_to_stdout",
    "AccelChoice",
    "build_argv",
    "QemuRuntime",
    "QmpSession",
    "QmpEvent",
    "QmpGoneError",
    "map_event",
    "describe_exit",
]

"""VmSpec + NetworkPlan + resolved volumes → the hypervisor-neutral MachineConfig, and the
choice of hypervisor.

Called by the composition root (``launcher.run``) and by ``virt-launcher plan``; both are
pure functions, so the plan shows exactly what ``run`` would start. The QEMU argv builder
and the cloud-hypervisor config builder take the :class:`MachineConfig` from here.
"""

from __future__ import annotations

import logging

from hypervisor.machine import DiskImage, KernelBoot, MachineConfig
from launcher.errors import UsageError, VolumeError
from launcher.network.plan import NetworkPlan
from launcher.spec.model import SourceShape, VmSpec
from launcher.volumes import FileState, ResolvedVolumes

__all__ = ["HYPERVISORS", "QEMU", "CLOUD_HYPERVISOR", "build_machine", "choose_hypervisor"]

log = logging.getLogger(__name__)

QEMU = "qemu"
CLOUD_HYPERVISOR = "cloud-hypervisor"
HYPERVISORS = (QEMU, CLOUD_HYPERVISOR)
MIB = 1024 * 1024


def choose_hypervisor(spec: VmSpec, override: str | None = None) -> str:
    """``override`` (``--hypervisor``) when given, else by the spec's shape.

    Virtink runs cloud-hypervisor, KubeVirt runs QEMU: each user gets the VMM their
    manifests were written for.
    """
    if override is not None:
        if override not in HYPERVISORS:
            raise UsageError(f"hypervisor {override!r} is not one of {', '.join(HYPERVISORS)}")
        return override
    return CLOUD_HYPERVISOR if spec.shape is SourceShape.VIRTINK else QEMU


def build_machine(
    spec: VmSpec,
    network_plan: NetworkPlan,
    volumes: ResolvedVolumes,
    *,
    firmware: str | None = None,
) -> MachineConfig:
    """The machine ``run`` starts: CPUs and memory from the spec, NICs from the plan,
    the kernel and disks from ``volumes``.

    The memory size is rounded up to whole MiB (QEMU's unit). Disks whose file is built
    at run by a later stage (the cloud-init ISO, :attr:`FileState.BUILD`) are left out
    with a warning until that stage exists. ``firmware`` is used only when the spec has
    no kernel boot (QEMU falls back to its own BIOS when it is None).
    """
    kernel = None
    if volumes.kernel is not None:
        kernel = KernelBoot(
            kernel=volumes.kernel.path,
            initrd=volumes.initrd.path if volumes.initrd is not None else None,
            cmdline=volumes.cmdline,
        )
    elif volumes.initrd is not None:
        raise VolumeError(
            f"initrd {volumes.initrd.path} is given without a kernel (kernelBoot kernelPath)"
        )
    disks = []
    for index, disk in enumerate(volumes.disks):
        if disk.file.state is FileState.BUILD:
            log.warning(
                "disk %r (%s) is left out: %s is not built yet",
                disk.name,
                disk.file.kind.value,
                disk.file.path,
                extra={"event": "disk-skipped", "disk": disk.name},
            )
            continue
        disks.append(
            DiskImage(
                id=f"disk{index}",
                path=disk.file.path,
                format=disk.file.format,
                read_only=disk.read_only,
                cdrom=disk.cdrom,
                boot_order=disk.boot_order,
            )
        )
    memory = -(-spec.memory_bytes // MIB) * MIB
    return MachineConfig(
        name=spec.name,
        vcpus=spec.cpu.vcpus,
        memory_bytes=memory,
        kernel=kernel,
        firmware=firmware if kernel is None else None,
        disks=tuple(disks),
        nets=network_plan.devices,
    )

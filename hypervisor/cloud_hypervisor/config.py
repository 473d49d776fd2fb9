"""MachineConfig → cloud-hypervisor request bodies (``VmConfig``, ``NetConfig``, …) as JSON dicts.

Pure functions, called by :mod:`hypervisor.cloud_hypervisor.adapter`; every body they
return is validated against ``cloud-hypervisor-openapi.yaml`` in the component tests.

Decisions (cloud-hypervisor has no equivalent for some MachineConfig fields):

* NICs are not part of ``vm.create``: cloud-hypervisor ignores file descriptors passed with
  ``vm.create``, so every NIC is attached with ``vm.add-net`` and its pre-opened tap fds
  before ``vm.boot`` (:func:`net_config`, ``num_queues`` = 2 × fds).
* A guest PCI address ``SSSS:BB:DD.F`` maps to ``pci_segment`` = SSSS and
  ``pci_device_id`` = DD; cloud-hypervisor puts every device on bus 0 function 0, so any
  other bus or function is refused.
* ``boot_order`` has no cloud-hypervisor equivalent and is ignored; a ``cdrom`` disk is
  attached as a read-only virtio-blk disk (ISO 9660 images read fine from virtio-blk).
* A copy-on-write overlay (a containerDisk, ``DiskImage.backing``) is the qcow2 overlay
  with ``backing_files: true``; cloud-hypervisor then opens the image the overlay's
  header names read-only (its format from the header's backing-format extension).
* The serial port goes to the VMM's stdout (``Tty``), which the launcher forwards line by
  line; the virtio console is off.
"""

from __future__ import annotations

import re
from typing import Any

from hypervisor.errors import HypervisorError
from hypervisor.machine import DiskImage, MachineConfig, NetDevice, VdpaDevice, VfioDevice

__all__ = [
    "vm_config",
    "net_config",
    "device_config",
    "vdpa_config",
    "disk_config",
    "pci_placement",
]

_PCI = re.compile(r"^(?:([0-9a-fA-F]{1,4}):)?([0-9a-fA-F]{1,2}):([0-9a-fA-F]{1,2})\.([0-7])$")
_IMAGE_TYPES = {"raw": "Raw", "qcow2": "Qcow2"}


def pci_placement(address: str | None) -> dict[str, int]:
    """``{"pci_segment": S, "pci_device_id": D}`` for a guest PCI address, ``{}`` for None."""
    if address is None:
        return {}
    match = _PCI.match(address)
    if match is None:
        raise HypervisorError(f"guest PCI address {address!r} is not of the form SSSS:BB:DD.F")
    segment = int(match.group(1) or "0", 16)
    bus, device, function = (int(match.group(i), 16) for i in (2, 3, 4))
    if bus != 0 or function != 0:
        raise HypervisorError(
            f"guest PCI address {address!r} is not usable: cloud-hypervisor places devices "
            "on bus 00 function 0 only"
        )
    if device > 31:
        raise HypervisorError(f"guest PCI address {address!r} has a device number above 1f")
    return {"pci_segment": segment, "pci_device_id": device}


def disk_config(disk: DiskImage) -> dict[str, Any]:
    """A ``DiskConfig`` body for one disk."""
    image_type = _IMAGE_TYPES.get(disk.format)
    if image_type is None:
        raise HypervisorError(f"disk {disk.id!r} has format {disk.format!r}; use raw or qcow2")
    body: dict[str, Any] = {
        "id": disk.id,
        "path": disk.path,
        "readonly": disk.read_only or disk.cdrom,
        "image_type": image_type,
    }
    if disk.backing is not None:
        # A containerDisk overlay. cloud-hypervisor opens a qcow2 backing file (read-only,
        # raw or qcow2, named in the header) only when told to: backing_files is off by
        # default because it trusts the image's header; this header is the launcher's.
        if disk.format != "qcow2" or disk.backing_format not in _IMAGE_TYPES:
            raise HypervisorError(
                f"disk {disk.id!r} overlay must be qcow2 over a raw or qcow2 image, not "
                f"{disk.format} over {disk.backing_format!r}"
            )
        body["backing_files"] = True
    return body


def net_config(dev: NetDevice, num_fds: int) -> dict[str, Any]:
    """A ``NetConfig`` body for ``vm.add-net``: backed by ``num_fds`` tap fds, or by name if 0.

    With fds, ``num_queues`` is 2 × fds (one rx and one tx queue per tap queue); by name,
    2 × ``dev.queues``.
    """
    if dev.model != "virtio":
        raise HypervisorError(
            f"NIC {dev.id!r} has model {dev.model!r}; cloud-hypervisor has virtio"
        )
    if num_fds < 0 or (num_fds and num_fds != dev.queues):
        raise HypervisorError(
            f"NIC {dev.id!r} has {dev.queues} queue pairs but {num_fds} tap fds were opened"
        )
    body: dict[str, Any] = {
        "id": dev.id,
        "mac": dev.mac,
        "mtu": dev.mtu,
        "num_queues": 2 * (num_fds or dev.queues),
    }
    if not num_fds:
        body["tap"] = dev.tap
    body.update(pci_placement(dev.pci_address))
    return body


def device_config(dev: VfioDevice) -> dict[str, Any]:
    """A ``DeviceConfig`` body (VFIO passthrough by sysfs path)."""
    body: dict[str, Any] = {"id": dev.id, "path": dev.sysfs_path}
    body.update(pci_placement(dev.guest_pci_address))
    return body


def vdpa_config(dev: VdpaDevice) -> dict[str, Any]:
    """A ``VdpaConfig`` body (``num_queues`` is required by the API; 1 when unknown)."""
    return {
        "id": dev.id,
        "path": dev.path,
        "num_queues": dev.num_queues or 1,
        "iommu": dev.iommu,
    }


def vm_config(machine: MachineConfig) -> dict[str, Any]:
    """The ``vm.create`` body: CPUs, memory, payload, disks, VFIO and vDPA devices, serial.

    NICs are left out on purpose (see the module docstring): attach them with
    :func:`net_config` and ``vm.add-net`` before ``vm.boot``.
    """
    if machine.vcpus < 1:
        raise HypervisorError(f"VM {machine.name!r} has {machine.vcpus} vCPUs; need at least 1")
    if machine.memory_bytes <= 0:
        raise HypervisorError(f"VM {machine.name!r} has memory {machine.memory_bytes} bytes")
    payload: dict[str, str] = {}
    if machine.kernel is not None:
        payload["kernel"] = machine.kernel.kernel
        if machine.kernel.initrd is not None:
            payload["initramfs"] = machine.kernel.initrd
        if machine.kernel.cmdline:
            payload["cmdline"] = machine.kernel.cmdline
    elif machine.firmware is not None:
        payload["firmware"] = machine.firmware
    else:
        raise HypervisorError(f"VM {machine.name!r} has neither a kernel nor a firmware to boot")
    body: dict[str, Any] = {
        "cpus": {"boot_vcpus": machine.vcpus, "max_vcpus": machine.vcpus},
        "memory": {"size": machine.memory_bytes},
        "payload": payload,
        "serial": {"mode": "Tty"},
        "console": {"mode": "Off"},
    }
    if machine.disks:
        body["disks"] = [disk_config(d) for d in machine.disks]
    if machine.vfio:
        body["devices"] = [device_config(d) for d in machine.vfio]
    if machine.vdpa:
        body["vdpa"] = [vdpa_config(d) for d in machine.vdpa]
    return body

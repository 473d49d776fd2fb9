"""The QEMU command line for a :class:`~hypervisor.machine.MachineConfig`, as a pure function.

:func:`build_argv` turns a machine description plus a few runtime choices
(:class:`QemuRuntime`: accelerator, QMP socket, pidfile, vhost availability, pre-opened
tap fds) into the exact ``qemu-system-x86_64`` argv. It touches nothing on disk, so unit
tests assert whole argvs. The adapter (:mod:`hypervisor.qemu.adapter`) calls it once per
VM; ``virt-launcher plan`` may print it.

Layout rules (q35):

* every device sits behind its own ``pcie-root-port`` on ``pcie.0`` (so it can be hot
  unplugged and the guest sees a stable topology), except a device whose spec pins a
  guest PCI address: that one is placed directly on ``pcie.0`` at exactly that
  ``slot.function``, so the guest sees the address the user asked for (bus must be 00);
* ``config.hotplug_ports`` empty root ports (``hp0``…) are left for hot plug;
* root ports take the free slots of ``pcie.0`` from 0x02 upwards (0x00 is the host
  bridge, 0x1f the ICH9 functions, 0x01 is left for a display device);
* a ``pvpanic`` device lets a guest kernel report a panic (QMP ``GUEST_PANICKED``; QEMU's
  default panic action then powers the VM off and the adapter reports it as Failed);
* the serial console is a ``stdio`` chardev: QEMU's stdout is a pipe the adapter reads
  line by line (nothing is lost before the launcher connects, unlike a socket chardev).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from hypervisor.machine import DiskImage, MachineConfig, NetDevice, VdpaDevice, VfioDevice
from launcher.errors import HypervisorError

__all__ = ["QemuRuntime", "build_argv", "root_port_id", "netdev_id", "drive_id", "MIB"]

MIB = 1024 * 1024
_FIRST_SLOT = 0x02
_LAST_SLOT = 0x1E
_ID_RE = re.compile(r"^[A-Za-z][A-Za-z0-9._-]{0,30}$")
_PCI_RE = re.compile(
    r"^(?:(?P<domain>[0-9a-fA-F]{4}):)?(?P<bus>[0-9a-fA-F]{2}):"
    r"(?P<slot>[0-9a-fA-F]{2})\.(?P<fn>[0-7])$"
)
_NIC_MODELS = {"virtio": "virtio-net-pci", "e1000e": "e1000e", "e1000": "e1000"}


@dataclass(frozen=True, slots=True)
class QemuRuntime:
    """Runtime choices that are not part of the machine description.

    ``accel`` is ``"kvm"`` or ``"tcg"`` (see :mod:`hypervisor.qemu.probe`); ``vhost_net``
    says whether ``/dev/vhost-net`` exists (``vhost=on`` aborts QEMU otherwise);
    ``tap_fds`` maps a NIC id to tap fds already open in this process, passed to QEMU with
    ``pass_fds`` (one fd per queue pair) instead of opening the tap by name.
    """

    qmp_socket: str
    accel: str = "tcg"
    binary: str = "qemu-system-x86_64"
    pidfile: str | None = None
    vhost_net: bool = False
    tap_fds: Mapping[str, tuple[int, ...]] = field(default_factory=dict)


def root_port_id(device_id: str) -> str:
    """The id of the PCIe root port that carries ``device_id``."""
    return f"rp-{device_id}"


def netdev_id(device_id: str) -> str:
    """The id of the ``-netdev`` backend of NIC ``device_id``."""
    return f"hn-{device_id}"


def drive_id(device_id: str) -> str:
    """The block node name of disk ``device_id``."""
    return f"drive-{device_id}"


def _opt(value: str) -> str:
    """Escape a value for QEMU's ``key=value,…`` syntax (a comma is doubled)."""
    return value.replace(",", ",,")


def _check_id(device_id: str) -> None:
    if not _ID_RE.match(device_id):
        raise HypervisorError(
            f"device id {device_id!r} is not a valid QEMU id "
            "(a letter, then up to 30 letters, digits, '.', '_' or '-')"
        )


def _pinned_slot(device_id: str, address: str) -> tuple[int, int]:
    match = _PCI_RE.match(address)
    if match is None:
        raise HypervisorError(f"guest PCI address {address!r} of {device_id} is not DDDD:BB:SS.F")
    domain = int(match["domain"] or "0", 16)
    bus = int(match["bus"], 16)
    slot = int(match["slot"], 16)
    if domain != 0 or bus != 0:
        raise HypervisorError(
            f"guest PCI address {address!r} of {device_id} is not on bus 0000:00 "
            "(QEMU can pin devices only on the root bus)"
        )
    if not _FIRST_SLOT <= slot <= _LAST_SLOT:
        raise HypervisorError(
            f"guest PCI address {address!r} of {device_id} uses slot 0x{slot:02x}, "
            f"outside the free range 0x{_FIRST_SLOT:02x}-0x{_LAST_SLOT:02x}"
        )
    return slot, int(match["fn"])


class _Bus:
    """Hands out root ports on free pcie.0 slots and records the ``-device`` lines for them."""

    def __init__(self, pinned: Mapping[str, tuple[int, int]]) -> None:
        self._pinned = dict(pinned)
        taken = {slot for slot, _fn in pinned.values()}
        self._free = [s for s in range(_FIRST_SLOT, _LAST_SLOT + 1) if s not in taken]
        self._chassis = 0
        self.args: list[str] = []

    def place(self, device_id: str) -> str:
        """The ``bus=…[,addr=…]`` properties for device ``device_id``."""
        if device_id in self._pinned:
            slot, fn = self._pinned[device_id]
            multi = ",multifunction=on" if fn == 0 and self._multi(slot) else ""
            return f"bus=pcie.0,addr=0x{slot:02x}.0x{fn:x}{multi}"
        return f"bus={self.root_port(root_port_id(device_id))}"

    def _multi(self, slot: int) -> bool:
        return sum(1 for s, _fn in self._pinned.values() if s == slot) > 1

    def root_port(self, port_id: str) -> str:
        """Add a root port with ``port_id`` on the next free slot; return its id."""
        if not self._free:
            raise HypervisorError(
                f"no free pcie.0 slot left for root port {port_id} "
                f"(at most {_LAST_SLOT - _FIRST_SLOT + 1} devices plus hot-plug ports)"
            )
        slot = self._free.pop(0)
        self._chassis += 1
        self.args += [
            "-device",
            f"pcie-root-port,id={port_id},bus=pcie.0,addr=0x{slot:02x}.0x0,"
            f"chassis={self._chassis},port=0x{0x10 + self._chassis:x}",
        ]
        return port_id


def _machine_args(config: MachineConfig, runtime: QemuRuntime) -> list[str]:
    if runtime.accel not in ("kvm", "tcg"):
        raise HypervisorError(f"accelerator {runtime.accel!r} is not 'kvm' or 'tcg'")
    if config.vcpus < 1:
        raise HypervisorError(f"vCPU count {config.vcpus} is below 1")
    if config.memory_bytes <= 0 or config.memory_bytes % MIB:
        raise HypervisorError(
            f"memory size {config.memory_bytes} bytes is not a positive whole number of MiB"
        )
    if config.hotplug_ports < 0:
        raise HypervisorError(f"hot-plug port count {config.hotplug_ports} is negative")
    args = [
        runtime.binary,
        "-name",
        f"guest={_opt(config.name)},debug-threads=on",
        "-no-user-config",
        "-nodefaults",
        "-nographic",
        "-machine",
        "q35",
        "-accel",
        runtime.accel,
        "-cpu",
        "host" if runtime.accel == "kvm" else "max",
        "-smp",
        str(config.vcpus),
        "-m",
        f"{config.memory_bytes // MIB}M",
        "-qmp",
        f"unix:{_opt(runtime.qmp_socket)},server=on,wait=off",
        "-chardev",
        "stdio,id=serial0,signal=off",
        "-serial",
        "chardev:serial0",
        "-device",
        "pvpanic",
    ]
    if runtime.pidfile:
        args += ["-pidfile", runtime.pidfile]
    return args


def _boot_args(config: MachineConfig) -> list[str]:
    if config.kernel is not None and config.firmware is not None:
        raise HypervisorError(
            f"machine {config.name!r} has both a kernel and firmware {config.firmware!r}"
        )
    if config.kernel is not None:
        args = ["-kernel", config.kernel.kernel]
        if config.kernel.initrd:
            args += ["-initrd", config.kernel.initrd]
        if config.kernel.cmdline:
            args += ["-append", config.kernel.cmdline]
        return args
    if config.firmware is not None:
        # Split OVMF images (OVMF_CODE*.fd) only work as pflash; a whole image works as -bios.
        if "CODE" in config.firmware.rsplit("/", 1)[-1].upper():
            return [
                "-drive",
                f"if=pflash,format=raw,unit=0,readonly=on,file={_opt(config.firmware)}",
            ]
        return ["-bios", config.firmware]
    return []


def _net_args(dev: NetDevice, runtime: QemuRuntime, bus: _Bus) -> list[str]:
    model = _NIC_MODELS.get(dev.model)
    if model is None:
        raise HypervisorError(
            f"NIC model {dev.model!r} of {dev.id} is not one of {', '.join(sorted(_NIC_MODELS))}"
        )
    if dev.queues < 1:
        raise HypervisorError(f"queue count {dev.queues} of {dev.id} is below 1")
    if dev.queues > 1 and model != "virtio-net-pci":
        raise HypervisorError(f"NIC {dev.id} asks for {dev.queues} queues but {dev.model} has one")
    backend = [f"tap,id={netdev_id(dev.id)}"]
    fds = runtime.tap_fds.get(dev.id)
    if fds:
        if len(fds) != dev.queues:
            raise HypervisorError(
                f"NIC {dev.id} has {len(fds)} tap fds but {dev.queues} queue pairs"
            )
        backend.append(f"fds={':'.join(str(fd) for fd in fds)}" if len(fds) > 1 else f"fd={fds[0]}")
    else:
        backend.append(f"ifname={_opt(dev.tap)},script=no,downscript=no")
        if dev.queues > 1:
            backend.append(f"queues={dev.queues}")
    if runtime.vhost_net and model == "virtio-net-pci":
        backend.append("vhost=on")
    front = [f"{model},id={dev.id},netdev={netdev_id(dev.id)},mac={dev.mac}"]
    if model == "virtio-net-pci":
        front.append(f"host_mtu={dev.mtu}")
        if dev.queues > 1:
            front.append(f"mq=on,vectors={2 * dev.queues + 2}")
    if dev.boot_order is not None:
        front.append(f"bootindex={dev.boot_order}")
    front.append(bus.place(dev.id))
    return ["-netdev", ",".join(backend), "-device", ",".join(front)]


def _vfio_args(dev: VfioDevice, bus: _Bus) -> list[str]:
    host = dev.sysfs_path.rstrip("/").rsplit("/", 1)[-1]
    if not _PCI_RE.match(host):
        raise HypervisorError(
            f"VFIO device {dev.id} path {dev.sysfs_path!r} does not end in a PCI address"
        )
    return ["-device", f"vfio-pci,id={dev.id},host={host},{bus.place(dev.id)}"]


def _vdpa_args(dev: VdpaDevice, bus: _Bus) -> list[str]:
    # num_queues counts queues (cloud-hypervisor's meaning): QEMU wants queue pairs.
    pairs = max(1, (dev.num_queues or 2) // 2)
    backend = f"vhost-vdpa,id={netdev_id(dev.id)},vhostdev={_opt(dev.path)}"
    front = f"virtio-net-pci,id={dev.id},netdev={netdev_id(dev.id)}"
    if pairs > 1:
        backend += f",queues={pairs}"
        front += f",mq=on,vectors={2 * pairs + 2}"
    if dev.iommu:
        front += ",iommu_platform=on"
    return ["-netdev", backend, "-device", f"{front},{bus.place(dev.id)}"]


def _disk_args(disk: DiskImage, bus: _Bus, scsi: str | None) -> list[str]:
    if disk.format not in ("raw", "qcow2"):
        raise HypervisorError(f"disk {disk.id} format {disk.format!r} is not raw or qcow2")
    read_only = disk.read_only or disk.cdrom
    protocol = "host_device" if disk.path.startswith("/dev/") else "file"
    node: dict[str, object] = {
        "driver": disk.format,
        "node-name": drive_id(disk.id),
        "read-only": read_only,
        "file": {"driver": protocol, "filename": disk.path, "read-only": read_only},
    }
    args = ["-blockdev", json.dumps(node, separators=(",", ":"))]
    boot = f",bootindex={disk.boot_order}" if disk.boot_order is not None else ""
    if disk.cdrom:
        assert scsi is not None
        args += ["-device", f"scsi-cd,id={disk.id},drive={drive_id(disk.id)},bus={scsi}.0{boot}"]
    else:
        args += [
            "-device",
            f"virtio-blk-pci,id={disk.id},drive={drive_id(disk.id)}{boot},{bus.place(disk.id)}",
        ]
    return args


def _check_unique(ids: Sequence[str]) -> None:
    seen: set[str] = set()
    for device_id in ids:
        _check_id(device_id)
        if device_id in seen:
            raise HypervisorError(f"device id {device_id!r} is used twice")
        seen.add(device_id)


def build_argv(config: MachineConfig, runtime: QemuRuntime) -> list[str]:
    """The complete QEMU argv for ``config`` (argv[0] is ``runtime.binary``).

    Raises :class:`~launcher.errors.HypervisorError` naming the offending value when the
    config cannot be expressed (bad id, PCI address off the root bus, too many devices…).
    """
    ids = [d.id for d in config.nets] + [d.id for d in config.vfio] + [d.id for d in config.vdpa]
    ids += [d.id for d in config.disks]
    _check_unique(ids)
    pinned: dict[str, tuple[int, int]] = {}
    owners: dict[tuple[int, int], str] = {}
    for dev_id, address in [(n.id, n.pci_address) for n in config.nets] + [
        (v.id, v.guest_pci_address) for v in config.vfio
    ]:
        if address is None:
            continue
        where = _pinned_slot(dev_id, address)
        if where in owners:
            raise HypervisorError(
                f"guest PCI address {address!r} of {dev_id} is also used by {owners[where]}"
            )
        owners[where] = dev_id
        pinned[dev_id] = where
    for (slot, fn), dev_id in owners.items():
        if fn != 0 and (slot, 0) not in owners:
            raise HypervisorError(
                f"guest PCI address of {dev_id} uses function {fn} of slot 0x{slot:02x} "
                "but nothing is pinned to function 0"
            )

    args = _machine_args(config, runtime) + _boot_args(config)
    bus = _Bus(pinned)
    devices: list[str] = []
    for net in config.nets:
        devices += _net_args(net, runtime, bus)
    for vfio in config.vfio:
        devices += _vfio_args(vfio, bus)
    for vdpa in config.vdpa:
        devices += _vdpa_args(vdpa, bus)
    scsi = None
    if any(d.cdrom for d in config.disks):
        scsi = "scsi0"
        devices += ["-device", f"virtio-scsi-pci,id={scsi},{bus.place(scsi)}"]
    for disk in config.disks:
        devices += _disk_args(disk, bus, scsi)
    for index in range(config.hotplug_ports):
        bus.root_port(f"hp{index}")
    return args + bus.args + devices

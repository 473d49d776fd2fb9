"""The QEMU command line for a :class:`~hypervisor.machine.MachineConfig`, as a pure function.

:func:`build_argv` turns a machine description plus a few runtime choices
(:class:`QemuRuntime`: accelerator, QMP socket, pidfile, vhost availability, pre-opened
tap fds) into the exact ``qemu-system-x86_64`` argv. It touches nothing on disk, so unit
tests assert whole argvs. The adapter (:mod:`hypervisor.qemu.adapter`) calls it once per
VM; ``virt-launcher plan`` may print it.

Layout rules (q35):

* every device sits behind its own ``pcie-root-port`` on ``pcie.0`` (so it can be hot
  unplugged and the guest sees a stable topology), except a device whose spec pins a
  guest PCI address on bus 00: that one is placed directly on ``pcie.0`` at exactly that
  ``slot.function``, so the guest sees the address the user asked for;
* ``config.hotplug_ports`` empty root ports (``hp0``…) are left for hot plug;
* root ports take the free slots of ``pcie.0`` from 0x02 upwards (0x00 is the host
  bridge, 0x1f the ICH9 functions, 0x01 is left for a display device), one per slot;
* a device pinned to ``0000:BB:00.0`` with bus BB > 0 sits at slot 0 of its own root
  port, and that port is made the BB-th root port in slot order. The guest firmware
  (SeaBIOS, OVMF) numbers buses depth-first in slot order and nothing behind a root port
  is a bridge, so the N-th root port's secondary bus is N (as libvirt does, whose
  controller index is the bus number). The other root ports (devices in order, then
  ``hp0``…) fill the positions around the pinned ones; if they run out before a pinned
  bus, empty filler ports ``rp_fill<N>`` take the gap. Behind a root port only slot 0
  and function 0 exist, so any other slot or function there is refused;
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

from hypervisor.errors import HypervisorError
from hypervisor.machine import DiskImage, MachineConfig, NetDevice, VdpaDevice, VfioDevice
from hypervisor.qemu.devices import NIC_MODELS

__all__ = ["QemuRuntime", "build_argv", "root_port_id", "netdev_id", "drive_id", "MIB"]

MIB = 1024 * 1024
_FIRST_SLOT = 0x02
_LAST_SLOT = 0x1E
_ID_RE = re.compile(r"^[A-Za-z][A-Za-z0-9._-]{0,30}$")
_PCI_RE = re.compile(
    r"^(?:(?P<domain>[0-9a-fA-F]{4}):)?(?P<bus>[0-9a-fA-F]{2}):"
    r"(?P<slot>[0-9a-fA-F]{2})\.(?P<fn>[0-7])$"
)


@dataclass(frozen=True, slots=True)
class QemuRuntime:
    """Runtime choices that are not part of the machine description.

    ``accel`` is ``"kvm"`` or ``"tcg"`` (see :mod:`hypervisor.qemu.probe`); ``vhost_net``
    says whether ``/dev/vhost-net`` exists (``vhost=on`` aborts QEMU otherwise);
    ``tap_fds`` maps a NIC id to tap fds already open in this process, passed to QEMU with
    ``pass_fds`` (one fd per queue pair) instead of opening the tap by name; ``qmp_fd`` is
    a QMP socket already listening at ``qmp_socket`` in this process (QEMU accepts on it
    and creates no file: a VMM running as another user needs no access to the directory).
    """

    qmp_socket: str
    accel: str = "tcg"
    binary: str = "qemu-system-x86_64"
    pidfile: str | None = None
    vhost_net: bool = False
    tap_fds: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    qmp_fd: int | None = None


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


def _pinned_address(device_id: str, address: str) -> tuple[int, int, int]:
    """``(bus, slot, function)`` of a pinned guest address, refusing what cannot be built."""
    match = _PCI_RE.match(address)
    if match is None:
        raise HypervisorError(f"guest PCI address {address!r} of {device_id} is not DDDD:BB:SS.F")
    domain = int(match["domain"] or "0", 16)
    bus = int(match["bus"], 16)
    slot = int(match["slot"], 16)
    fn = int(match["fn"])
    if domain != 0:
        raise HypervisorError(
            f"guest PCI address {address!r} of {device_id} is not in PCI domain 0000 "
            "(a q35 guest has one domain)"
        )
    if bus > 0:
        if slot != 0 or fn != 0:
            raise HypervisorError(
                f"guest PCI address {address!r} of {device_id} is on bus {bus:02x} but not "
                f"at slot 00 function 0 (behind a PCIe root port only {bus:02x}:00.0 exists)"
            )
        return bus, 0, 0
    if not _FIRST_SLOT <= slot <= _LAST_SLOT:
        raise HypervisorError(
            f"guest PCI address {address!r} of {device_id} uses slot 0x{slot:02x}, "
            f"outside the free range 0x{_FIRST_SLOT:02x}-0x{_LAST_SLOT:02x}"
        )
    return 0, slot, fn


class _Bus:
    """Plans the root ports on ``pcie.0`` and records the ``-device`` lines for them.

    :meth:`place` and :meth:`root_port` only queue a port; :meth:`ports_args` decides the
    order (pinned buses at their position, the rest in request order around them) and
    the slots, once every device has asked.
    """

    def __init__(
        self, pinned: Mapping[str, tuple[int, int, int]], addresses: Mapping[str, str]
    ) -> None:
        self._addresses = dict(addresses)
        self._root = {d: (s, f) for d, (b, s, f) in pinned.items() if b == 0}
        self._bus_of = {d: b for d, (b, _s, _f) in pinned.items() if b > 0}
        taken = {slot for slot, _fn in self._root.values()}
        self._free = [s for s in range(_FIRST_SLOT, _LAST_SLOT + 1) if s not in taken]
        self._queued: list[str] = []
        self._at_bus: dict[int, str] = {}

    def place(self, device_id: str) -> str:
        """The ``bus=…[,addr=…]`` properties for device ``device_id``."""
        if device_id in self._root:
            slot, fn = self._root[device_id]
            multi = ",multifunction=on" if fn == 0 and self._multi(slot) else ""
            return f"bus=pcie.0,addr=0x{slot:02x}.0x{fn:x}{multi}"
        port_id = root_port_id(device_id)
        if device_id in self._bus_of:
            self._at_bus[self._bus_of[device_id]] = port_id
            return f"bus={port_id},addr=0x00.0x0"
        self._queued.append(port_id)
        return f"bus={port_id}"

    def _multi(self, slot: int) -> bool:
        return sum(1 for s, _fn in self._root.values() if s == slot) > 1

    def root_port(self, port_id: str) -> str:
        """Queue an empty root port ``port_id`` (after the device ports); return its id."""
        self._queued.append(port_id)
        return port_id

    def ports_args(self) -> list[str]:
        """The ``-device pcie-root-port`` arguments, in slot order."""
        order: list[str] = []
        queued = list(self._queued)
        last = max(self._at_bus, default=0)
        while queued or len(order) < last:
            position = len(order) + 1
            if position in self._at_bus:
                order.append(self._at_bus[position])
            elif queued:
                order.append(queued.pop(0))
            else:
                order.append(f"rp_fill{position}")
        if len(order) > len(self._free):
            for bus_nr, port_id in sorted(self._at_bus.items()):
                if bus_nr > len(self._free):
                    dev_id = port_id.removeprefix("rp-")
                    raise HypervisorError(
                        f"guest PCI address {self._addresses[dev_id]!r} of {dev_id} needs "
                        f"{bus_nr} root ports before it but pcie.0 has only "
                        f"{len(self._free)} free slots"
                    )
            raise HypervisorError(
                f"no free pcie.0 slot left for root port {order[len(self._free)]} "
                f"(at most {len(self._free)} devices plus hot-plug ports)"
            )
        args: list[str] = []
        for chassis, (port_id, slot) in enumerate(zip(order, self._free, strict=False), 1):
            args += [
                "-device",
                f"pcie-root-port,id={port_id},bus=pcie.0,addr=0x{slot:02x}.0x0,"
                f"chassis={chassis},port=0x{0x10 + chassis:x}",
            ]
        return args


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
        *(["-S"] if any(not dev.link_up for dev in config.nets) else []),
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
        *(
            ["-qmp", f"unix:{_opt(runtime.qmp_socket)},server=on,wait=off"]
            if runtime.qmp_fd is None
            else [
                "-chardev",
                f"socket,id=qmp,fd={runtime.qmp_fd},server=on,wait=off",
                "-mon",
                "chardev=qmp,mode=control",
            ]
        ),
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
    model = NIC_MODELS.get(dev.model)
    if model is None:
        raise HypervisorError(
            f"NIC model {dev.model!r} of {dev.id} is not one of {', '.join(sorted(NIC_MODELS))}"
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


def _file_node(path: str, read_only: bool) -> dict[str, object]:
    protocol = "host_device" if path.startswith("/dev/") else "file"
    return {"driver": protocol, "filename": path, "read-only": read_only}


def _disk_args(disk: DiskImage, bus: _Bus, scsi: str | None) -> list[str]:
    if disk.format not in ("raw", "qcow2"):
        raise HypervisorError(f"disk {disk.id} format {disk.format!r} is not raw or qcow2")
    read_only = disk.read_only or disk.cdrom
    node: dict[str, object] = {
        "driver": disk.format,
        "node-name": drive_id(disk.id),
        "read-only": read_only,
        "file": _file_node(disk.path, read_only),
    }
    if disk.backing is not None:
        # A copy-on-write overlay: its image is named here, opened read-only, so the argv
        # says what the guest reads and QEMU does not probe the header's name and format.
        if disk.format != "qcow2" or disk.backing_format not in ("raw", "qcow2"):
            raise HypervisorError(
                f"disk {disk.id} overlay must be qcow2 over a raw or qcow2 image, not "
                f"{disk.format} over {disk.backing_format!r}"
            )
        node["backing"] = {
            "driver": disk.backing_format,
            "read-only": True,
            "file": _file_node(disk.backing, True),
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

    Raises :class:`~hypervisor.errors.HypervisorError` naming the offending value when the
    config cannot be expressed (bad id, PCI address that cannot be built, too many devices…).
    """
    ids = [d.id for d in config.nets] + [d.id for d in config.vfio] + [d.id for d in config.vdpa]
    ids += [d.id for d in config.disks]
    _check_unique(ids)
    pinned: dict[str, tuple[int, int, int]] = {}
    owners: dict[tuple[int, int, int], str] = {}
    addresses: dict[str, str] = {}
    for dev_id, address in [(n.id, n.pci_address) for n in config.nets] + [
        (v.id, v.guest_pci_address) for v in config.vfio
    ]:
        if address is None:
            continue
        where = _pinned_address(dev_id, address)
        if where in owners:
            raise HypervisorError(
                f"guest PCI address {address!r} of {dev_id} is also used by {owners[where]}"
            )
        owners[where] = dev_id
        pinned[dev_id] = where
        addresses[dev_id] = address
    for (bus_nr, slot, fn), dev_id in owners.items():
        if fn != 0 and (bus_nr, slot, 0) not in owners:
            raise HypervisorError(
                f"guest PCI address of {dev_id} uses function {fn} of slot 0x{slot:02x} "
                "but nothing is pinned to function 0"
            )

    args = _machine_args(config, runtime) + _boot_args(config)
    bus = _Bus(pinned, addresses)
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
    return args + bus.ports_args() + devices

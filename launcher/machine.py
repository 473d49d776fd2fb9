"""The one composition: (spec, pod state, options) → (network plan, machine config).

:func:`compose` is called by ``virt-launcher run`` (``launcher.run``), by ``virt-launcher
plan`` (``launcher.plandoc``) and, for one interface, :func:`plan_nic` by hot plug
(``launcher.hotplug``): what ``plan`` prints is what ``run`` starts and what a plug adds.
It is pure: discovery reads the pod before, ``launcher.nics`` applies the plan after.
Also here: the choice of hypervisor, the hypervisor-neutral
:class:`~hypervisor.machine.MachineConfig` (CPUs, memory, kernel, disks, and the guest
devices the network plan decided, turned into the hypervisor's device types by
:func:`net_device` and :func:`passthrough_device`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from hypervisor.machine import (
    DiskImage,
    KernelBoot,
    MachineConfig,
    NetDevice,
    VdpaDevice,
    VfioDevice,
)
from launcher.errors import Problem, SpecError, UsageError, VolumeError
from launcher.network import NetworkPlan, NicPlan, PodState
from launcher.network import plan as plan_network
from launcher.network.devices import GuestNic, GuestVdpa, GuestVfio
from launcher.network.multus import PassthroughNic
from launcher.network.plan import plan_interface
from launcher.options import DEFAULT_HOTPLUG_PORTS, RunOptions
from launcher.podinfo import PodInfo
from launcher.spec.model import (
    Bridge,
    InterfaceState,
    ManagedTap,
    Masquerade,
    SourceShape,
    VmSpec,
    reserved_port_clashes,
    reserved_ports,
)
from launcher.volumes import ResolvedVolumes

__all__ = [
    "compose",
    "Composition",
    "plan_pod_network",
    "plan_nic",
    "build_machine",
    "choose_hypervisor",
    "check_for_hypervisor",
    "nic_model_problems",
    "link_state_problems",
    "forwarded_port_problems",
    "QEMU_NIC_MODELS",
    "net_device",
    "passthrough_device",
    "vfio_device",
    "vdpa_device",
    "HYPERVISORS",
    "QEMU",
    "CLOUD_HYPERVISOR",
]

QEMU = "qemu"
CLOUD_HYPERVISOR = "cloud-hypervisor"
HYPERVISORS = (QEMU, CLOUD_HYPERVISOR)
MIB = 1024 * 1024
#: every NIC model the spec accepts, in the order the docs list them
QEMU_NIC_MODELS = ("virtio", "e1000", "e1000e", "igb", "rtl8139", "ne2k_pci", "pcnet")


@dataclass(frozen=True, slots=True)
class Composition:
    """What a launcher will do for one spec in one pod: wire ``network``, start ``machine``
    with ``hypervisor``."""

    network: NetworkPlan
    machine: MachineConfig
    hypervisor: str


def compose(
    spec: VmSpec,
    pod: PodState,
    options: RunOptions,
    podinfo: PodInfo | None,
    volumes: ResolvedVolumes,
    *,
    firmware: str | None = None,
) -> Composition:
    """THE composition (pure): plan the pod network for ``spec`` and build the machine.

    Raises NetworkError/PodInfoError (exit 3) for the network, VolumeError or
    UsageError (exit 2) for the machine.
    """
    network = plan_pod_network(spec, pod, options, podinfo)
    machine = build_machine(
        spec,
        network,
        volumes,
        firmware=firmware,
        hotplug_ports=options.hotplug_ports
        if options.hotplug_ports is not None
        else DEFAULT_HOTPLUG_PORTS,
    )
    return Composition(network, machine, choose_hypervisor(spec, options.hypervisor))


def plan_pod_network(
    spec: VmSpec, pod: PodState, options: RunOptions, podinfo: PodInfo | None
) -> NetworkPlan:
    """The composition's first stage (pure): the network plan of ``spec`` in ``pod``.
    ``plan`` shows it even when the machine cannot be built."""
    options.check()
    return plan_network(spec, pod, options.plan_options(podinfo))


def plan_nic(
    spec: VmSpec,
    pod: PodState,
    options: RunOptions,
    podinfo: PodInfo | None,
    name: str,
    *,
    avoid: Collection[int] = (),
    at: int | None = None,
) -> NicPlan | PassthroughNic:
    """Hot plug: interface ``name`` of the new ``spec`` planned against the pod as it is
    now, the same way :func:`compose` plans it, at an index not in ``avoid`` (or exactly
    ``at``: the link refresh re-plans a running NIC under its own names)."""
    return plan_interface(spec, pod, options.plan_options(podinfo), name, avoid=avoid, at=at)


def net_device(nic: GuestNic) -> NetDevice:
    """The hypervisor's NIC for a planned tap-backed guest NIC."""
    return NetDevice(
        id=nic.id,
        tap=nic.tap,
        mac=nic.mac,
        mtu=nic.mtu,
        queues=nic.queues,
        pci_address=nic.pci_address,
        boot_order=nic.boot_order,
        model=nic.model,
        link_up=nic.link_up,
    )


def vfio_device(device: GuestVfio) -> VfioDevice:
    """The hypervisor's device for a planned SR-IOV VF."""
    return VfioDevice(
        id=device.id, sysfs_path=device.sysfs_path, guest_pci_address=device.guest_pci_address
    )


def vdpa_device(device: GuestVdpa) -> VdpaDevice:
    """The hypervisor's device for a planned vhost-vdpa device."""
    return VdpaDevice(
        id=device.id, path=device.path, num_queues=device.num_queues, iommu=device.iommu
    )


def passthrough_device(device: GuestVfio | GuestVdpa) -> VfioDevice | VdpaDevice:
    """The hypervisor's device for a planned SR-IOV VF or vDPA device."""
    return vfio_device(device) if isinstance(device, GuestVfio) else vdpa_device(device)


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
    hotplug_ports: int = DEFAULT_HOTPLUG_PORTS,
) -> MachineConfig:
    """The machine ``run`` starts: CPUs and memory from the spec, NICs, VFIO and vDPA
    devices from the plan, the kernel and disks from ``volumes``.

    The memory size is rounded up to whole MiB (QEMU's unit). A disk whose file is still
    to be made (:attr:`FileState.CREATE` by ``volumes.prepare``, :attr:`FileState.BUILD`
    by ``cloudinit.build_seeds``) is attached at its planned path, so ``plan`` shows the
    machine ``run`` starts; ``run`` makes those files before the VMM starts. ``firmware``
    is used only when the spec has no kernel boot (QEMU falls back to its own BIOS).
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
        backing = disk.file.backing  # a containerDisk's image under its overlay
        disks.append(
            DiskImage(
                id=f"disk{index}",
                path=disk.file.path,
                format=disk.file.format,
                read_only=disk.read_only,
                cdrom=disk.cdrom,
                boot_order=disk.boot_order,
                backing=backing.path if backing is not None else None,
                backing_format=backing.format if backing is not None else None,
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
        nets=tuple(net_device(d) for d in network_plan.devices),
        vfio=tuple(vfio_device(d) for d in network_plan.vfio),
        vdpa=tuple(vdpa_device(d) for d in network_plan.vdpa),
        hotplug_ports=hotplug_ports,
    )


def nic_model_problems(
    spec: VmSpec, hypervisor: str, qemu_models: Callable[[], Collection[str]]
) -> list[Problem]:
    """Each tap-backed interface whose ``model`` the chosen hypervisor cannot emulate, as a
    problem naming the field, the model and the hypervisor.

    cloud-hypervisor emulates virtio-net only; QEMU what ``qemu_models()`` (the probe of
    the installed binary, :func:`hypervisor.qemu.devices.qemu_nic_models`) lists. The
    probe is only asked when some interface is not virtio. SR-IOV and vDPA interfaces
    have no emulated model; an interface marked ``absent`` is not started.
    """
    problems: list[Problem] = []
    available: Collection[str] | None = None
    for index, iface in enumerate(spec.interfaces):
        if iface.state is InterfaceState.ABSENT or iface.model == "virtio":
            continue
        if not isinstance(iface.binding, Bridge | Masquerade | ManagedTap):
            continue
        path = f"{spec.interface_path(index)}.model"
        if hypervisor == CLOUD_HYPERVISOR:
            problems.append(
                Problem(
                    path,
                    f'"{iface.model}" is not supported by cloud-hypervisor, which emulates '
                    "virtio NICs only (use model virtio, or run QEMU)",
                )
            )
            continue
        if available is None:
            available = qemu_models()
        if iface.model not in available:
            have = ", ".join(m for m in QEMU_NIC_MODELS if m in available)
            problems.append(
                Problem(
                    path,
                    f'"{iface.model}" is not supported by qemu: the installed QEMU has no '
                    f"{iface.model} device (it emulates {have})",
                )
            )
    return problems


def link_state_problems(spec: VmSpec, hypervisor: str) -> list[Problem]:
    """Each ``state: down`` interface the hypervisor cannot start without carrier: QEMU
    sets an emulated NIC's link (``set_link``); cloud-hypervisor has no link API (taking
    the tap's carrier away would not show in the guest, which keeps its carrier), and a
    passed-through device's link is the device's own."""
    problems: list[Problem] = []
    for index, iface in enumerate(spec.interfaces):
        if iface.state is not InterfaceState.DOWN:
            continue
        path = f"{spec.interface_path(index)}.state"
        if not isinstance(iface.binding, Bridge | Masquerade | ManagedTap):
            problems.append(
                Problem(
                    path,
                    f'"down" is not supported for a {iface.binding.kind.value} interface: '
                    "only tap-backed (bridge, masquerade) NICs have a link the launcher sets",
                )
            )
        elif hypervisor == CLOUD_HYPERVISOR:
            problems.append(
                Problem(
                    path,
                    '"down" is not supported by cloud-hypervisor, which has no link-state API '
                    "(the guest would keep its carrier; run QEMU)",
                )
            )
    return problems


def forwarded_port_problems(spec: VmSpec, status_port: int) -> list[Problem]:
    """Each masquerade ``ports``/``portRanges`` entry holding a port the pod itself uses
    when the status endpoint listens on ``status_port`` (``validate --status-listen``;
    ``plan`` and ``run`` meet the same rule in the masquerade binding)."""
    problems: list[Problem] = []
    reserved = reserved_ports(dict(spec.annotations), status_port)
    for index, iface in enumerate(spec.interfaces):
        if isinstance(iface.binding, Masquerade):
            base = spec.interface_path(index)
            clashes = reserved_port_clashes(
                iface.binding.ports, iface.binding.port_ranges, reserved
            )
            problems += [Problem(f"{base}.{where}", message) for where, message in clashes]
    return problems


def check_for_hypervisor(
    spec: VmSpec, hypervisor: str, *, qemu_binary: str, cache_dir: Path | None
) -> None:
    """Refuse (SpecError, exit 2) what :func:`nic_model_problems` and
    :func:`link_state_problems` find; ``validate``, ``plan``, ``run`` (before the pod is
    touched) and hot plug call it."""

    def probe() -> Collection[str]:
        from hypervisor.qemu.devices import qemu_nic_models  # noqa: PLC0415 - only when asked

        return qemu_nic_models(qemu_binary, cache_dir)

    problems = nic_model_problems(spec, hypervisor, probe) + link_state_problems(spec, hypervisor)
    if problems:
        raise SpecError(problems)

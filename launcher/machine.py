"""VmSpec + NetworkPlan + resolved volumes → the hypervisor-neutral MachineConfig, the
choice of hypervisor, and the whole document ``virt-launcher plan`` prints.

Called by the composition root (``launcher.run``: :func:`choose_hypervisor`,
:func:`build_machine`) and by ``virt-launcher plan`` (:func:`plan_document`, which uses
the same functions, so the plan shows exactly what ``run`` would start). The QEMU argv
builder and the cloud-hypervisor config builder take the :class:`MachineConfig` from here.
Nothing here changes the system: discovery only reads the pod netns.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypervisor.machine import DiskImage, KernelBoot, MachineConfig
from launcher.errors import HypervisorError, LauncherError, UsageError, VolumeError
from launcher.jsonable import to_jsonable
from launcher.network import DEFAULT_STATE_DIR, PlanOptions, PodState, discover
from launcher.network import plan as plan_network
from launcher.network.discover import PodLink
from launcher.network.multus import map_interfaces
from launcher.network.names import derived_mac, pod_interface_name
from launcher.network.netlink import Route
from launcher.network.plan import NetworkPlan
from launcher.network.resolv import Resolv
from launcher.network.sysfs import HostPaths
from launcher.podinfo import DEFAULT_PODINFO_DIR, PodInfo, load_podinfo
from launcher.spec.model import CloudInitNoCloud, InterfaceState, SourceShape, VmSpec
from launcher.volumes import DEFAULT_VOLUMES_DIR, ResolvedVolumes, VolumeLayout, resolve

__all__ = [
    "HYPERVISORS",
    "QEMU",
    "CLOUD_HYPERVISOR",
    "PlanSettings",
    "build_machine",
    "choose_hypervisor",
    "plan_document",
    "synthetic_pod",
]

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
        vfio=network_plan.vfio,
        vdpa=network_plan.vdpa,
    )


# --- virt-launcher plan ---------------------------------------------------------------

OFFLINE_POD_MAC = "0a:58:0a:f4:01:05"
OFFLINE_RESOLV = Resolv(
    nameservers=(ipaddress.ip_address("10.96.0.10"),),
    search=("default.svc.cluster.local", "svc.cluster.local", "cluster.local"),
)


@dataclass(frozen=True, slots=True)
class PlanSettings:
    """What ``virt-launcher plan`` was asked for (the run options it shares, plus its own).

    ``offline`` plans against :func:`synthetic_pod` instead of reading a netns;
    ``pod_netns`` reads that named netns instead of the current one.
    """

    offline: bool = False
    pod_netns: str | None = None
    state_dir: Path = DEFAULT_STATE_DIR
    volumes_dir: Path = DEFAULT_VOLUMES_DIR
    hypervisor: str | None = None
    accel: str = "auto"
    qemu_binary: str = "qemu-system-x86_64"
    cloud_hypervisor_binary: str = "cloud-hypervisor"
    podinfo: Path | None = DEFAULT_PODINFO_DIR  # downward API dir (Multus network-status)
    host_root: Path = Path("/")  # where /sys and /dev are for the SR-IOV/vDPA checks


def synthetic_pod(spec: VmSpec, podinfo: PodInfo | None = None) -> PodState:
    """A pod as a CNI typically leaves it, for ``plan --offline`` (documented in
    docs/volumes.md): ``eth0`` 10.244.1.5/24 + fd00:10:244:1::5/64 with default routes via
    10.244.1.1 and fe80::1, MTU 1450; each Multus interface ``netN`` 192.168.N.5/24
    (named as ``podinfo``'s network-status says when given; SR-IOV/vDPA NICs need none).
    """
    links: dict[str, PodLink] = {}
    for iface in spec.interfaces:
        if iface.state is InterfaceState.ABSENT:
            continue
        mapped = map_interfaces(spec, podinfo).get(iface.name)  # network-status names first
        name = mapped.pod_interface if mapped and mapped.pod_interface else None
        name = name or pod_interface_name(spec, iface)
        if name in links:
            continue
        if name == "eth0":
            links[name] = PodLink(
                name=name,
                mac=OFFLINE_POD_MAC,
                mtu=1450,
                kind="veth",
                addresses4=(ipaddress.IPv4Interface("10.244.1.5/24"),),
                addresses6=(ipaddress.IPv6Interface("fd00:10:244:1::5/64"),),
                routes=(
                    Route(
                        ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_address("10.244.1.1"), name
                    ),
                    Route(ipaddress.ip_network("::/0"), ipaddress.ip_address("fe80::1"), name),
                ),
            )
        else:
            suffix = name.removeprefix("net")
            index = int(suffix) if suffix.isdigit() else len(links) + 1
            links[name] = PodLink(
                name=name,
                mac=derived_mac(f"offline-{name}"),
                mtu=1500,
                kind="veth",
                addresses4=(ipaddress.IPv4Interface(f"192.168.{index}.5/24"),),
            )
    return PodState(links=tuple(links.values()), resolv=OFFLINE_RESOLV, hostname=spec.name)


def _read_pod(settings: PlanSettings) -> PodState:
    resolv = Path("/etc/resolv.conf")
    if settings.pod_netns is not None:
        per_netns = Path("/etc/netns") / settings.pod_netns / "resolv.conf"
        resolv = per_netns if per_netns.is_file() else resolv
    state_dir = settings.state_dir if settings.state_dir.is_dir() else None
    return discover(settings.pod_netns, state_dir=state_dir, resolv_conf=resolv)


def _hypervisor_view(kind: str, machine: MachineConfig, settings: PlanSettings) -> dict[str, Any]:
    # Imported here, not at the top: ``run`` imports this module and must not pay for the
    # builders of the hypervisor it does not run (the cloud-hypervisor package pulls aiohttp).
    from hypervisor.cloud_hypervisor.config import net_config, vm_config  # noqa: PLC0415
    from hypervisor.qemu.argv import QemuRuntime, build_argv  # noqa: PLC0415

    view: dict[str, Any] = {"kind": kind, "machine": to_jsonable(machine)}
    if kind == QEMU:
        accel = settings.accel
        if accel == "auto":
            accel = "kvm" if os.access("/dev/kvm", os.R_OK | os.W_OK) else "tcg"
            view["accel"] = {
                "mode": "auto",
                "shown": accel,
                "note": "run probes whether KVM really boots a guest and falls back to TCG",
            }
        else:
            view["accel"] = {"mode": accel, "shown": accel}
        runtime = QemuRuntime(
            qmp_socket=str(settings.state_dir / "qemu" / "qmp.sock"),
            accel=accel,
            binary=settings.qemu_binary,
            pidfile=str(settings.state_dir / "qemu" / "qemu.pid"),
            vhost_net=os.path.exists("/dev/vhost-net"),
        )
        view["argv"] = build_argv(machine, runtime)
    else:
        view["binary"] = settings.cloud_hypervisor_binary
        view["vm_config"] = vm_config(machine)
        view["add_net"] = [net_config(dev, dev.queues) for dev in machine.nets]
    return view


def _problem(stage: str, err: LauncherError | HypervisorError) -> dict[str, Any]:
    return {"stage": stage, "message": str(err), "exit_code": err.exit_code}


def _seed_content(spec: VmSpec, volume: Any, network: NetworkPlan | None) -> Any:
    from launcher.cloudinit import seed_content  # noqa: PLC0415 - only `plan` shows seeds

    return seed_content(spec, volume, network)


def plan_document(spec: VmSpec, settings: PlanSettings) -> tuple[dict[str, Any], int]:
    """What ``virt-launcher plan`` prints, and its exit code.

    Every stage that can be computed is shown: ``network`` is null when the pod netns
    could not be read or planned, ``hypervisor`` is null when there is no network plan or
    the hypervisor config cannot be built. Missing volume files are listed in
    ``problems`` (and in ``volumes`` as ``"state": "missing"``) without hiding the rest.
    The exit code is 0 without problems, else the first problem's documented code.
    """
    problems: list[dict[str, Any]] = []
    doc: dict[str, Any] = {"spec": to_jsonable(spec)}
    kind = choose_hypervisor(spec, settings.hypervisor)
    pod_source = "offline" if settings.offline else (settings.pod_netns or "current netns")
    network: NetworkPlan | None = None
    try:
        podinfo = load_podinfo(settings.podinfo)
        pod = synthetic_pod(spec, podinfo) if settings.offline else _read_pod(settings)
        options = PlanOptions(podinfo=podinfo, host=HostPaths(settings.host_root))
        network = plan_network(spec, pod, options)
    except LauncherError as err:
        problems.append(_problem("network", err))
    doc["network"] = None if network is None else {"pod": pod_source, **network.to_dict()}
    volumes: ResolvedVolumes | None = None
    layout = VolumeLayout(volumes_dir=settings.volumes_dir, scratch_dir=settings.state_dir)
    try:
        volumes = resolve(spec, layout)
    except LauncherError as err:
        problems.append(_problem("volumes", err))
    doc["volumes"] = None if volumes is None else to_jsonable(volumes)
    if volumes is not None:
        problems += [
            {"stage": "volumes", "message": p, "exit_code": VolumeError.exit_code}
            for p in volumes.problems
        ]
    doc["hypervisor"] = None
    if network is not None and volumes is not None:
        try:
            machine = build_machine(spec, network, volumes)
            doc["hypervisor"] = _hypervisor_view(kind, machine, settings)
        except (LauncherError, HypervisorError) as err:
            problems.append(_problem("hypervisor", err))
    try:
        doc["cloud_init"] = {  # the seed ISO contents run would build (launcher.cloudinit)
            v.name: to_jsonable(_seed_content(spec, v, network))
            for v in spec.volumes
            if isinstance(v.source, CloudInitNoCloud)
        }
    except LauncherError as err:
        doc["cloud_init"] = None
        problems.append(_problem("cloud-init", err))
    doc["problems"] = problems
    return doc, problems[0]["exit_code"] if problems else 0

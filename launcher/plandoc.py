"""What ``virt-launcher plan`` prints: spec, network plan, volumes, hypervisor config.

Called by the CLI's ``plan``. Uses the one composition (:func:`launcher.machine.compose`,
with the same :class:`~launcher.options.RunOptions` as ``run``), so the plan shows
exactly what ``run`` would start and every DHCPv4 option its servers would send.
Nothing here changes the system: discovery only reads the pod netns, or, with
``--offline``, a synthetic pod (:func:`synthetic_pod`) stands in for it.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from pathlib import Path
from typing import Any

from hypervisor.machine import MachineConfig
from launcher.errors import HypervisorError, LauncherError, VolumeError
from launcher.jsonable import to_jsonable
from launcher.machine import (
    QEMU,
    check_for_hypervisor,
    choose_hypervisor,
    compose,
    plan_pod_network,
)
from launcher.network import PodState, discover
from launcher.network.discover import PodLink
from launcher.network.multus import map_interfaces
from launcher.network.names import derived_mac, pod_interface_name
from launcher.network.netlink import Route
from launcher.network.plan import NetworkPlan
from launcher.network.resolv import Resolv
from launcher.options import RunOptions
from launcher.podinfo import PodInfo, load_podinfo
from launcher.spec.model import CloudInitNoCloud, InterfaceState, VmSpec
from launcher.volumes import ResolvedVolumes, VolumeLayout, resolve

__all__ = ["plan_document", "synthetic_pod"]

log = logging.getLogger(__name__)

OFFLINE_POD_MAC = "0a:58:0a:f4:01:05"
OFFLINE_RESOLV = Resolv(
    nameservers=(ipaddress.ip_address("10.96.0.10"),),
    search=("default.svc.cluster.local", "svc.cluster.local", "cluster.local"),
)


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


def _read_pod(options: RunOptions, pod_netns: str | None) -> PodState:
    resolv = Path("/etc/resolv.conf")
    if pod_netns is not None:
        per_netns = Path("/etc/netns") / pod_netns / "resolv.conf"
        resolv = per_netns if per_netns.is_file() else resolv
    state_dir = options.state_dir if options.state_dir.is_dir() else None
    return discover(pod_netns, state_dir=state_dir, resolv_conf=resolv)


def _hypervisor_view(kind: str, machine: MachineConfig, options: RunOptions) -> dict[str, Any]:
    # Imported here, not at the top: ``run`` imports this module and must not pay for the
    # builders of the hypervisor it does not run (the cloud-hypervisor package pulls aiohttp).
    from hypervisor.cloud_hypervisor.config import net_config, vm_config  # noqa: PLC0415 - startup
    from hypervisor.qemu.argv import QemuRuntime, build_argv  # noqa: PLC0415 - startup

    view: dict[str, Any] = {"kind": kind, "machine": to_jsonable(machine)}
    view["vmm_user"] = {
        "user": options.vmm_user,
        "note": "run opens the taps and passes them as file descriptors (tap fd=N); with "
        "a VMM user it also passes the QMP/API socket listening (fd=N): the numbers are "
        "known only at run time (docs/privileges.md)",
    }
    if kind == QEMU:
        accel = options.accel
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
            qmp_socket=str(options.state_dir / "qemu" / "qmp.sock"),
            accel=accel,
            binary=options.qemu_binary,
            pidfile=str(options.state_dir / "qemu" / "qemu.pid"),
            vhost_net=os.path.exists("/dev/vhost-net"),
        )
        view["argv"] = build_argv(machine, runtime)
    else:
        view["binary"] = options.cloud_hypervisor_binary
        view["vm_config"] = vm_config(machine)
        view["add_net"] = [net_config(dev, dev.queues) for dev in machine.nets]
    return view


def _problem(stage: str, err: LauncherError | HypervisorError) -> dict[str, Any]:
    return {"stage": stage, "message": str(err), "exit_code": err.exit_code}


def _seed_content(spec: VmSpec, volume: Any, network: NetworkPlan | None) -> Any:
    from launcher.cloudinit import seed_content  # noqa: PLC0415 - startup: cloud-init

    return seed_content(spec, volume, network)


def plan_document(
    spec: VmSpec, options: RunOptions, *, offline: bool = False, pod_netns: str | None = None
) -> tuple[dict[str, Any], int]:
    """What ``virt-launcher plan`` prints, and its exit code.

    ``offline`` plans against :func:`synthetic_pod` instead of reading a netns;
    ``pod_netns`` reads that named netns instead of the current one. Every stage that can
    be computed is shown: ``network`` is null when the pod netns could not be read or
    planned, ``hypervisor`` is null when there is no network plan or the hypervisor config
    cannot be built. Missing volume files are listed in ``problems`` (and in ``volumes``
    as ``"state": "missing"``) without hiding the rest. The exit code is 0 without
    problems, else the first problem's documented code.
    """
    problems: list[dict[str, Any]] = []
    doc: dict[str, Any] = {"spec": to_jsonable(spec)}
    pod_source = "offline" if offline else (pod_netns or "current netns")
    network: NetworkPlan | None = None
    pod: PodState | None = None
    podinfo: PodInfo | None = None
    try:  # what the hypervisor cannot run is the spec's problem (exit 2), shown first
        check_for_hypervisor(
            spec,
            choose_hypervisor(spec, options.hypervisor),
            qemu_binary=options.qemu_binary,
            cache_dir=None,
        )
    except (LauncherError, HypervisorError) as err:
        problems.append(_problem("spec", err))
    try:
        podinfo = load_podinfo(options.podinfo)
        pod = synthetic_pod(spec, podinfo) if offline else _read_pod(options, pod_netns)
        network = plan_pod_network(spec, pod, options, podinfo)
    except LauncherError as err:
        problems.append(_problem("network", err))
    doc["network"] = None if network is None else {"pod": pod_source, **network.to_dict()}
    volumes: ResolvedVolumes | None = None
    layout = VolumeLayout(volumes_dir=options.volumes_dir, scratch_dir=options.state_dir)
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
    if network is not None and pod is not None and volumes is not None:
        try:
            composed = compose(spec, pod, options, podinfo, volumes)
            doc["hypervisor"] = _hypervisor_view(composed.hypervisor, composed.machine, options)
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

"""The Kubernetes objects that run one VM on a plain cluster: ``virt-launcher manifest``.

Called by the CLI (``launcher.cli.manifest``) and the tests. :func:`build` turns a valid
:class:`~launcher.spec.model.VmSpec` (and the spec file's text) into two objects, printed
by :func:`render` as a multi-document YAML stream for ``kubectl apply -f -``:

* a ``ConfigMap`` holding the spec, mounted where ``run`` reads it;
* a ``Pod`` running the launcher image with exactly the privileges this VM needs.

What is derived from what (docs/deploy.md explains each choice):

* **Capabilities** from the network plan and the disks (:func:`capabilities`): the plan is
  made by the one composition's network stage (:func:`launcher.machine.plan_pod_network`)
  with the :class:`~launcher.options.RunOptions` the Pod's ``run`` args give
  (:func:`run_options`) against ``plan --offline``'s synthetic pod
  (:func:`launcher.plandoc.synthetic_pod`) with the spec's tap NICs (bridge, masquerade);
  CHOWN only for a writable disk file the VMM user is given
  (:func:`launcher.privileges.handed_over_disks`), so each capability is tied to
  something the launcher will really do.
* **Pod sysctls** are ``NetworkPlan.sysctls``. Contract with ``launcher.network``: that
  field holds exactly the pod-level, network-namespaced ``net.*`` sysctls the pod must
  declare (what netlink cannot set); nothing is filtered here, and the tests check that
  every sysctl in the manifest is a namespaced ``net.*`` one.
* **Devices** (``/dev/kvm``, ``/dev/net/tun``, ``/dev/vhost-net``) as device-plugin
  resources, named as KubeVirt's device plugin names them unless told otherwise.
* **Memory and CPU requests**: guest + :func:`memory_overhead` / :func:`cpu_request`.
* **Multus** ``k8s.v1.cni.cncf.io/networks`` (and ``v1.multus-cni.io/default-network``)
  from the spec's multus networks, asking for the pod interface names the launcher looks
  for without a network-status; device-plugin resources of SR-IOV and vDPA networks come
  from the caller (the spec does not carry them).
* **Volumes**: kernelBoot and containerDisk images copied by init containers into
  emptyDirs (or mounted as ``image`` volumes), PVCs and dataVolumes as
  ``persistentVolumeClaim``, hostDisks as ``hostPath``, an emptyDir for the state dir.

A spec that cannot run this way raises :class:`~launcher.errors.SpecError` listing every
reason as ``path: message`` (exit 2), like ``validate``.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from launcher.errors import LauncherError, Problem, SpecError
from launcher.machine import QEMU, choose_hypervisor, plan_pod_network
from launcher.network.discover import PodState
from launcher.network.multus import map_interfaces, qualified_network_name
from launcher.network.plan import NetworkPlan
from launcher.options import RunOptions
from launcher.plandoc import synthetic_pod
from launcher.privileges import needed_capabilities
from launcher.spec.model import (
    BindingKind,
    ContainerDisk,
    DataVolume,
    HostDisk,
    InterfaceState,
    MultusNetwork,
    PersistentVolumeClaim,
    SourceShape,
    VmSpec,
)

__all__ = [
    "ManifestSettings",
    "DeviceNames",
    "ImageSource",
    "build",
    "render",
    "capabilities",
    "memory_overhead",
    "cpu_request",
    "grace_period",
    "network_annotations",
    "plan_for_manifest",
    "run_options",
    "GRACE_MARGIN_S",
    "LAUNCHER_MEMORY_MIB",
    "VMM_MEMORY_MIB",
    "VFIO_MEMORY_MIB",
    "VMM_UID",
]

MIB = 1024 * 1024

#: Seconds added to the spec's grace period for kubelet's: after the grace period the
#: launcher still stops the VMM hard (QMP ``quit`` / ``vmm.shutdown``, each step bounded
#: at 10 s, usually < 1 s), cleans up the pod network in a netlink child (< 1 s) and
#: writes the termination log. 15 s = one bounded hard-stop step + 5 s; KubeVirt pads
#: its launcher pod's grace period by 15 s too.
GRACE_MARGIN_S = 15
#: The launcher's share of the memory request (docs/deploy.md, "Memory and CPU"): the
#: launcher once its status endpoint served a request (48 MiB, bench/README.md; the
#: probes make that happen), one netlink child (35 MiB: start-up, exit cleanup, each hot
#: plug) and two exec probes at once (2 x 16 MiB), 115 MiB of RSS, rounded up.
LAUNCHER_MEMORY_MIB = 120
#: The VMM process beyond guest RAM: QEMU's own RSS (30 MiB) and its I/O thread (8 MiB),
#: KubeVirt's figures; used for cloud-hypervisor as well (it is smaller).
VMM_MEMORY_MIB = 38
#: Per vCPU (KubeVirt: "CPU table overhead").
VCPU_MEMORY_MIB = 8
#: VFIO locks all guest RAM plus the device's MMIO space (KubeVirt adds the same 1 GiB).
VFIO_MEMORY_MIB = 1024
#: The launcher, probes, DHCP and the VMM's emulator/I-O threads when CPUs are shared.
CPU_OVERHEAD_MILLI = 100
#: The VMM user (KubeVirt's qemu uid/gid); also the pod's fsGroup.
VMM_UID = 107

#: The API server's limit on a ConfigMap's data (etcd's object size limit).
CONFIGMAP_MAX_BYTES = 1024 * 1024
SPEC_DIR = "/etc/virt-launcher"
SPEC_FILE = "vm.yaml"
PODINFO_DIR = "/etc/podinfo"
STATE_DIR = "/var/run/virt-launcher"
VOLUMES_DIR = "/var/run/virt-launcher/volumes"
TERMINATION_LOG = "/dev/termination-log"
TOOLS_DIR = "/var/run/virt-launcher-tools"
COPIER = "/bin/busybox"  # a static binary: it runs inside FROM-scratch disk images
LAUNCHER_CONTAINER = "launcher"
NETWORKS_ANNOTATION = "k8s.v1.cni.cncf.io/networks"
DEFAULT_NETWORK_ANNOTATION = "v1.multus-cni.io/default-network"
KUBEVIRT_RESOURCE_ENV = "KUBEVIRT_RESOURCE_NAME_"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")


class ImageSource(enum.StrEnum):
    """How kernelBoot and containerDisk images reach the pod."""

    COPY = "copy"  # init containers copy the files into emptyDirs (any Kubernetes)
    VOLUME = "volume"  # Kubernetes ``image`` volumes, read-only (ImageVolume gate, 1.31+)


@dataclass(frozen=True, slots=True)
class DeviceNames:
    """Device-plugin resource names; ``None`` leaves the device out."""

    kvm: str | None = "devices.kubevirt.io/kvm"
    tun: str | None = "devices.kubevirt.io/tun"
    vhost_net: str | None = "devices.kubevirt.io/vhost-net"


@dataclass(frozen=True, slots=True)
class ManifestSettings:
    """What ``virt-launcher manifest`` was asked for besides the spec."""

    image: str = "virt-launcher:latest"
    namespace: str | None = None  # default: the spec's metadata.namespace
    image_pull_policy: str | None = None
    devices: DeviceNames = field(default_factory=DeviceNames)
    hypervisor: str | None = None  # passed to run; decides vhost-net
    accel: str | None = None  # passed to run; ``tcg`` needs no /dev/kvm
    image_source: ImageSource = ImageSource.COPY
    copier_image: str | None = None  # image with a static /bin/busybox; default ``image``
    network_resources: tuple[tuple[str, str], ...] = ()  # spec network → device-plugin resource
    network_resources_injected: bool = False  # network-resources-injector adds them
    block_volumes: tuple[str, ...] = ()  # PVC/dataVolume volumes in block mode
    grace_margin_s: int = GRACE_MARGIN_S
    cpu_allocation_ratio: int = 1
    restart_policy: str = "Never"
    ip_families: str = "dual"  # the pod network's families: dual, ipv4, ipv6
    probes: bool = True


# --- the parts, each testable alone ----------------------------------------------------


def _prefix(spec: VmSpec) -> tuple[str, str]:
    """(instance spec path, devices path) in the spec document's own field names."""
    if spec.shape is SourceShape.VIRTINK:
        return "spec", "spec.instance"
    base = "spec.template.spec" if spec.shape is SourceShape.KUBEVIRT_VM else "spec"
    return base, f"{base}.domain.devices"


def _restrict_families(pod: PodState, families: str) -> PodState:
    if families == "dual":
        return pod
    keep = 4 if families == "ipv4" else 6
    links = tuple(
        dataclasses.replace(
            lk,
            addresses4=lk.addresses4 if keep == 4 else (),
            addresses6=lk.addresses6 if keep == 6 else (),
            routes=tuple(r for r in lk.routes if r.dst.version == keep),
        )
        for lk in pod.links
    )
    return dataclasses.replace(pod, links=links)


#: bindings backed by a tap the launcher creates (issue 18 added managedtap)
_TAP_KINDS = (BindingKind.BRIDGE, BindingKind.MASQUERADE, BindingKind.MANAGEDTAP)


def _tap_only(spec: VmSpec) -> VmSpec:
    """``spec`` with only its tap NICs (bridge, masquerade) and their networks: SR-IOV and
    vDPA devices need the node's sysfs and the CNI's network-status to plan, and add no
    sysctl and no capability beyond SYS_RESOURCE (decided from the spec)."""
    taps = tuple(i for i in spec.interfaces if i.binding.kind in _TAP_KINDS)
    wanted = {i.network for i in taps}
    return dataclasses.replace(
        spec, interfaces=taps, networks=tuple(n for n in spec.networks if n.name in wanted)
    )


_RUN_DEFAULTS = RunOptions(spec_path=Path(SPEC_DIR) / SPEC_FILE)


def run_options(settings: ManifestSettings) -> RunOptions:
    """The options the Pod's ``run`` gets (its args are rendered from them, :func:`_run_args`)."""
    return RunOptions(
        spec_path=Path(SPEC_DIR) / SPEC_FILE,
        podinfo=Path(PODINFO_DIR),
        state_dir=Path(STATE_DIR),
        volumes_dir=Path(VOLUMES_DIR),
        termination_log=Path(TERMINATION_LOG),
        hypervisor=settings.hypervisor,
        accel=settings.accel or _RUN_DEFAULTS.accel,
    )


def plan_for_manifest(
    spec: VmSpec, ip_families: str = "dual", options: RunOptions | None = None
) -> NetworkPlan:
    """The network plan of ``spec``'s tap NICs against the synthetic pod ``plan --offline``
    uses (dual-stack unless ``ip_families`` says otherwise), made by the one composition's
    network stage (:func:`launcher.machine.plan_pod_network`) with ``options``, by default
    those the Pod's ``run`` gets; NetworkError when it cannot be made."""
    tap_spec = _tap_only(spec)
    pod = _restrict_families(synthetic_pod(tap_spec), ip_families)
    if options is None:
        options = run_options(ManifestSettings())
    return plan_pod_network(tap_spec, pod, options, None)


def _has_tap_nic(spec: VmSpec) -> bool:
    return any(i.binding.kind in _TAP_KINDS for i in spec.interfaces)


def _has_vfio(spec: VmSpec) -> bool:
    return any(
        i.binding.kind is BindingKind.SRIOV and i.state is not InterfaceState.ABSENT
        for i in spec.interfaces
    )


def capabilities(
    spec: VmSpec, network: NetworkPlan, settings: ManifestSettings = ManifestSettings()
) -> tuple[str, ...]:
    """The capabilities the launcher container adds after dropping ALL: the ones ``run``
    checks at start (:func:`launcher.privileges.needed_capabilities`, one definition),
    for the Pod's ``run`` options (its VMM user) and the volumes ``settings`` says are in
    block mode (a block device is not handed over: no CHOWN for it)."""
    return needed_capabilities(
        spec,
        network,
        vmm_user=run_options(settings).vmm_user,
        block=settings.block_volumes,
    )


def memory_overhead(spec: VmSpec) -> int:
    """Bytes the pod needs beyond guest RAM (docs/deploy.md, "Memory and CPU").

    ``ceil(guest / 512)`` (page tables) + 8 MiB per vCPU + 38 MiB (the VMM) + 120 MiB
    (the launcher, its netlink child and the exec probes)
    + 1 GiB with an SR-IOV VF (VFIO locks guest RAM and MMIO space).
    """
    guest = -(-spec.memory_bytes // MIB) * MIB
    total = -(-guest // 512)
    total += (VCPU_MEMORY_MIB * spec.cpu.vcpus + VMM_MEMORY_MIB + LAUNCHER_MEMORY_MIB) * MIB
    if _has_vfio(spec):
        total += VFIO_MEMORY_MIB * MIB
    return total


def memory_request(spec: VmSpec) -> str:
    """Guest RAM + :func:`memory_overhead`, in whole MiB."""
    guest = -(-spec.memory_bytes // MIB) * MIB
    return f"{-(-(guest + memory_overhead(spec)) // MIB)}Mi"


def cpu_request(spec: VmSpec, allocation_ratio: int = 1) -> str:
    """The CPU request: with dedicated CPUs exactly the vCPU count (an integer, so the
    static CPU manager gives whole cores); else vCPUs / ``allocation_ratio`` + 100m."""
    if spec.cpu.dedicated:
        return str(spec.cpu.vcpus)
    milli = -(-spec.cpu.vcpus * 1000 // allocation_ratio) + CPU_OVERHEAD_MILLI
    return f"{milli}m"


def grace_period(spec: VmSpec, margin_s: int = GRACE_MARGIN_S) -> int:
    """kubelet's grace period: the spec's (the guest's power-off) + the launcher's margin."""
    return spec.termination_grace_period_s + margin_s


def network_annotations(spec: VmSpec) -> dict[str, str]:
    """The Multus annotations for the spec's multus networks.

    ``k8s.v1.cni.cncf.io/networks``: one selection element per secondary network with a
    live interface, asking for the pod interface name the launcher looks for when there
    is no network-status (``net<i>`` for Virtink, ``pod<hash>`` for KubeVirt), and the
    spec's MAC for an SR-IOV VF (VFIO cannot change it; the CNI programs it).
    ``v1.multus-cni.io/default-network`` for a ``multus.default`` network.
    """
    mappings = map_interfaces(spec)
    live = {i.network for i in spec.interfaces if i.state is not InterfaceState.ABSENT}
    out: dict[str, str] = {}
    elements: list[dict[str, str]] = []
    for network in spec.networks:
        source = network.source
        if not isinstance(source, MultusNetwork) or network.name not in live:
            continue
        qualified = qualified_network_name(source.network_name, spec.namespace)
        if source.default:
            out[DEFAULT_NETWORK_ANNOTATION] = qualified
            continue
        namespace, _, name = qualified.partition("/")
        element = {"name": name, "namespace": namespace}
        iface = next(i for i in spec.interfaces if i.network == network.name)
        pod_if = mappings[iface.name].pod_interface
        if pod_if:
            element["interface"] = pod_if
        if iface.binding.kind is BindingKind.SRIOV and iface.mac:
            element["mac"] = iface.mac
        elements.append(element)
    if elements:
        out[NETWORKS_ANNOTATION] = json.dumps(elements, separators=(",", ":"))
    return out


# --- assembling the objects ------------------------------------------------------------


@dataclass(slots=True)
class _Pod:
    """The pieces of the pod being assembled."""

    volumes: list[dict[str, Any]] = field(default_factory=list)
    mounts: list[dict[str, Any]] = field(default_factory=list)
    devices: list[dict[str, Any]] = field(default_factory=list)
    init: list[dict[str, Any]] = field(default_factory=list)
    env: list[dict[str, Any]] = field(default_factory=list)


def _names(spec: VmSpec, namespace: str, problems: list[Problem]) -> tuple[str, str]:
    pod = f"virt-launcher-{spec.name}"
    config = f"{pod}-spec"
    if len(config) > 253 or not _DNS_SUBDOMAIN.match(config):
        problems.append(
            Problem(
                "metadata.name",
                f"{spec.name!r} cannot name a pod: pod and ConfigMap names are lower-case "
                "letters, digits, '-' and '.' (DNS-1123 subdomain, at most 253 characters)",
            )
        )
    elif len(spec.name) > 63 or not _LABEL_VALUE.match(spec.name):
        problems.append(
            Problem("metadata.name", f"{spec.name!r} is longer than 63 characters (a label value)")
        )
    if len(namespace) > 63 or not _DNS_LABEL.match(namespace):
        problems.append(
            Problem(
                "metadata.namespace",
                f"{namespace!r} is not a Kubernetes namespace name (DNS-1123 label)",
            )
        )
    return pod, config


def _copy_container(
    name: str, image: str, script: str, args: list[str], mount: str
) -> dict[str, Any]:
    """An init container running the static copier inside ``image``.

    It runs as uid 0 with no capability (so it can read root-owned files of mode 0600 in
    the image, as the owner) and leaves each copy group-owned by the pod's fsGroup 107
    (the emptyDir's setgid directory) with mode 0660, so the VMM (gid 107) can use it.
    """
    return {
        "name": name,
        "image": image,
        "command": [f"{TOOLS_DIR}/busybox", "sh", "-c", script, "copy", *args],
        "securityContext": _unprivileged(0),
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
        "volumeMounts": [
            {"name": "vl-tools", "mountPath": TOOLS_DIR, "readOnly": True},
            {"name": mount, "mountPath": "/target"},
        ],
    }


# The copy scripts: fixed text, every path an argument ("$@"), nothing interpolated.
_COPY_TREE = (
    'set -e; for f in "$@"; do mkdir -p "/target$(dirname "$f")"; '
    'cp -L "$f" "/target$f"; chmod 0660 "/target$f"; done'
)
_COPY_DIR_FILES = 'set -e; for f in "$1"/*; do cp -L "$f" /target/; done; chmod 0660 /target/*'
_COPY_AS = 'set -e; cp -L "$1" "/target/$2"; chmod 0660 "/target/$2"'
_COPY_BASENAME = 'set -e; b=$(basename "$1"); cp -L "$1" "/target/$b"; chmod 0660 "/target/$b"'


def _unprivileged(uid: int) -> dict[str, Any]:
    """A container that can do nothing privileged: no capability, read-only root."""
    return {
        "runAsUser": uid,
        "runAsNonRoot": uid != 0,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
    }


def _kernel_volume(
    spec: VmSpec, settings: ManifestSettings, pod: _Pod, problems: list[Problem]
) -> None:
    boot = spec.kernel
    if boot is None or boot.image is None:
        return
    target = f"{VOLUMES_DIR}/kernel"
    if settings.image_source is ImageSource.VOLUME:
        pod.volumes.append(
            {"name": "vl-kernel", "image": {"reference": boot.image, **_pull(settings)}}
        )
        pod.mounts.append({"name": "vl-kernel", "mountPath": target, "readOnly": True})
        return
    if spec.shape is SourceShape.VIRTINK:
        files = ["/vmlinux"]  # Virtink kernel images carry /vmlinux
    else:
        files = [p for p in (boot.kernel_path, boot.initrd_path) if p]
        files = ["/" + str(PurePosixPath(p)).lstrip("/") for p in files]
    pod.volumes.append({"name": "vl-kernel", "emptyDir": {}})
    pod.mounts.append({"name": "vl-kernel", "mountPath": target, "readOnly": True})
    pod.init.append(_copy_container("vl-copy-kernel", boot.image, _COPY_TREE, files, "vl-kernel"))


def _pull(settings: ManifestSettings) -> dict[str, str]:
    return {"pullPolicy": settings.image_pull_policy} if settings.image_pull_policy else {}


def _disk_volumes(
    spec: VmSpec, settings: ManifestSettings, pod: _Pod, problems: list[Problem]
) -> None:
    base, _ = _prefix(spec)
    attached = {d.name for d in spec.disks}
    block = set(settings.block_volumes)
    known = {v.name: v for v in spec.volumes}
    for name in sorted(block):
        vol = known.get(name)
        if vol is None or not isinstance(vol.source, PersistentVolumeClaim | DataVolume):
            problems.append(
                Problem(
                    "--block-volume",
                    f"{name!r} is not a persistentVolumeClaim or dataVolume volume of the spec",
                )
            )
    for index, volume in enumerate(spec.volumes):
        source = volume.source
        path = f"{base}.volumes[{index}]"
        k8s_name = f"vl-disk-{index}"
        mount_path = f"{VOLUMES_DIR}/{volume.name}"
        if volume.name not in attached:
            continue
        match source:
            case ContainerDisk(image=image, path=inner):
                if settings.image_source is ImageSource.VOLUME:
                    # read-only is enough even for a writable disk: run never writes the
                    # image, the guest writes to a qcow2 overlay in the state dir
                    # (docs/volumes.md)
                    pod.volumes.append(
                        {"name": k8s_name, "image": {"reference": image, **_pull(settings)}}
                    )
                    pod.mounts.append({"name": k8s_name, "mountPath": mount_path, "readOnly": True})
                    continue
                pod.volumes.append({"name": k8s_name, "emptyDir": {}})
                pod.mounts.append({"name": k8s_name, "mountPath": mount_path})
                if inner:  # KubeVirt containerDisk.path: run looks for its basename first
                    script, args = _COPY_BASENAME, ["/" + str(PurePosixPath(inner)).lstrip("/")]
                elif spec.shape is SourceShape.VIRTINK:  # Virtink images: the file /disk
                    script, args = _COPY_AS, ["/disk", "disk.img"]
                else:  # KubeVirt images: one image file of any name in /disk/
                    script, args = _COPY_DIR_FILES, ["/disk"]
                pod.init.append(
                    _copy_container(f"vl-copy-disk-{index}", image, script, args, k8s_name)
                )
            case PersistentVolumeClaim(claim_name=claim, read_only=ro):
                _claim(
                    pod, k8s_name, claim, read_only=ro, block=volume.name in block, path=mount_path
                )
            case DataVolume(name=claim):
                _claim(
                    pod,
                    k8s_name,
                    claim,
                    read_only=False,
                    block=volume.name in block,
                    path=mount_path,
                )
            case HostDisk(path=host_path, type=kind):
                where = PurePosixPath(host_path)
                if not where.is_absolute():
                    problems.append(
                        Problem(f"{path}.hostDisk.path", f"{host_path!r} is not an absolute path")
                    )
                    continue
                if kind == "DiskOrCreate":  # run creates the file: mount its directory
                    pod.volumes.append(
                        {
                            "name": k8s_name,
                            "hostPath": {"path": str(where.parent), "type": "DirectoryOrCreate"},
                        }
                    )
                    pod.mounts.append({"name": k8s_name, "mountPath": str(where.parent)})
                else:
                    pod.volumes.append(
                        {"name": k8s_name, "hostPath": {"path": str(where), "type": "File"}}
                    )
                    pod.mounts.append({"name": k8s_name, "mountPath": str(where)})
            case _:
                pass  # emptyDisk and cloud-init: made by run in the state dir


def _claim(pod: _Pod, name: str, claim: str, *, read_only: bool, block: bool, path: str) -> None:
    source: dict[str, Any] = {"claimName": claim}
    if read_only:
        source["readOnly"] = True
    pod.volumes.append({"name": name, "persistentVolumeClaim": source})
    if block:
        pod.devices.append({"name": name, "devicePath": path})
    else:
        pod.mounts.append(
            {"name": name, "mountPath": path, **({"readOnly": True} if read_only else {})}
        )


def _network_resources(
    spec: VmSpec, settings: ManifestSettings, pod: _Pod, problems: list[Problem]
) -> dict[str, int]:
    """Device-plugin resources of the SR-IOV and vDPA networks (+ KubeVirt's variables
    naming them, so ``run`` finds the right ``PCIDEVICE_*`` pool)."""
    base, _ = _prefix(spec)
    given = dict(settings.network_resources)
    by_name = {n.name: (i, n) for i, n in enumerate(spec.networks)}
    for name in given:
        if name not in by_name or not isinstance(by_name[name][1].source, MultusNetwork):
            problems.append(
                Problem("--network-resource", f"{name!r} is not a multus network of the spec")
            )
    counts: dict[str, int] = {}
    for iface in spec.interfaces:
        if iface.state is InterfaceState.ABSENT:
            continue
        index, network = by_name[iface.network]
        resource = given.get(network.name)
        if resource is None and iface.binding.kind in (BindingKind.SRIOV, BindingKind.VDPA):
            if settings.network_resources_injected:
                continue
            assert isinstance(network.source, MultusNetwork)
            problems.append(
                Problem(
                    f"{base}.networks[{index}].multus.networkName",
                    f"the {iface.binding.kind.value} network {network.name!r} "
                    f"({network.source.network_name}) needs its device-plugin resource, which "
                    "the spec does not carry (it is the NetworkAttachmentDefinition's "
                    "k8s.v1.cni.cncf.io/resourceName annotation): pass --network-resource "
                    f"{network.name}=<resource>, or --network-resources-injected when the "
                    "network-resources-injector webhook adds it",
                )
            )
            continue
        if resource is None:
            continue
        counts[resource] = counts.get(resource, 0) + 1
        if iface.binding.kind is BindingKind.SRIOV:
            pod.env.append({"name": f"{KUBEVIRT_RESOURCE_ENV}{network.name}", "value": resource})
    return counts


def _device_resources(spec: VmSpec, settings: ManifestSettings, hypervisor: str) -> dict[str, int]:
    names = settings.devices
    out: dict[str, int] = {}
    if names.kvm and settings.accel != "tcg":
        out[names.kvm] = 1
    if names.tun and _has_tap_nic(spec):
        out[names.tun] = 1  # the launcher creates the taps through /dev/net/tun
    virtio = any(i.binding.kind in _TAP_KINDS and i.model == "virtio" for i in spec.interfaces)
    if names.vhost_net and hypervisor == QEMU and virtio:
        out[names.vhost_net] = 1  # QEMU uses vhost-net when /dev/vhost-net exists
    return out


def _probe(check: str, period: int, failures: int) -> dict[str, Any]:
    return {
        "exec": {"command": ["virt-launcher", "status", "--check", check]},
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


def _run_args(options: RunOptions) -> list[str]:
    """``run``'s command line for ``options`` (a unit test parses it back to them)."""
    args = [
        "run",
        "--spec",
        str(options.spec_path),
        "--podinfo",
        str(options.podinfo),
        "--state-dir",
        str(options.state_dir),
        "--volumes-dir",
        str(options.volumes_dir),
        "--termination-log",
        str(options.termination_log),
    ]
    if options.hypervisor:
        args += ["--hypervisor", options.hypervisor]
    if options.accel != _RUN_DEFAULTS.accel:
        args += ["--accel", options.accel]
    return args


def _spec_text(spec: VmSpec, text: str, namespace: str) -> str:
    """The spec file's text; with ``metadata.namespace`` set when the objects go to
    another namespace than the spec names (the launcher derives names and MACs from it)."""
    if namespace == spec.namespace:
        return text
    document = yaml.safe_load(text)
    document.setdefault("metadata", {})["namespace"] = namespace
    return str(yaml.safe_dump(document, sort_keys=False))


def _common_volumes(config_name: str) -> list[dict[str, Any]]:
    """The volumes every launcher pod has: the spec, the downward API, state and /tmp."""
    return [
        {"name": "vl-spec", "configMap": {"name": config_name}},
        {
            "name": "vl-podinfo",
            "downwardAPI": {
                "items": [
                    {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}}
                ]
            },
        },
        {"name": "vl-state", "emptyDir": {}},
        {"name": "vl-tmp", "emptyDir": {}},
    ]


_COMMON_MOUNTS: tuple[dict[str, Any], ...] = (
    {"name": "vl-spec", "mountPath": SPEC_DIR, "readOnly": True},
    {"name": "vl-podinfo", "mountPath": PODINFO_DIR, "readOnly": True},
    {"name": "vl-state", "mountPath": STATE_DIR},
    {"name": "vl-tmp", "mountPath": "/tmp"},  # noqa: S108 - a private emptyDir
)


def _init_containers(
    spec: VmSpec, settings: ManifestSettings, pod: _Pod, volumes: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The copier (the static busybox into an emptyDir, ``vl-tools``, added to ``volumes``)
    first, then the copy containers; Guaranteed-QoS limits with dedicated CPUs."""
    init: list[dict[str, Any]] = []
    if pod.init:  # the static copier the copy containers run inside the disk images
        volumes.append({"name": "vl-tools", "emptyDir": {}})
        init.append(
            {
                "name": "vl-tools",
                "image": settings.copier_image or settings.image,
                "command": ["cp", COPIER, f"{TOOLS_DIR}/busybox"],
                "securityContext": _unprivileged(VMM_UID),
                "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
                "volumeMounts": [{"name": "vl-tools", "mountPath": TOOLS_DIR}],
            }
        )
        init += pod.init
    if spec.cpu.dedicated:
        for helper in init:
            helper["resources"] = {
                "requests": {"cpu": "100m", "memory": "32Mi"},
                "limits": {"cpu": "100m", "memory": "32Mi"},
            }
    return init


def _launcher_container(
    spec: VmSpec,
    settings: ManifestSettings,
    pod: _Pod,
    *,
    options: RunOptions,
    network: NetworkPlan,
    requests: dict[str, Any],
    limits: dict[str, Any],
) -> dict[str, Any]:
    """The launcher's container: ``run`` with ``options``, the plan's capabilities only."""
    container: dict[str, Any] = {
        "name": LAUNCHER_CONTAINER,
        "image": settings.image,
        "args": _run_args(options),
        "resources": {"requests": requests, **({"limits": limits} if limits else {})},
        "securityContext": {
            "runAsUser": 0,
            "runAsNonRoot": False,
            "privileged": False,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {
                "drop": ["ALL"],
                "add": list(capabilities(spec, network, settings)),
            },
        },
        "volumeMounts": [dict(m) for m in _COMMON_MOUNTS] + pod.mounts,
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if settings.image_pull_policy:
        container["imagePullPolicy"] = settings.image_pull_policy
    if pod.devices:
        container["volumeDevices"] = pod.devices
    if pod.env:
        container["env"] = pod.env
    if settings.probes:
        container["startupProbe"] = _probe("live", 2, 90)
        container["livenessProbe"] = _probe("live", 10, 3)
        container["readinessProbe"] = _probe("ready", 5, 2)
    return container


def _network(
    spec: VmSpec,
    settings: ManifestSettings,
    options: RunOptions,
    devices_path: str,
    problems: list[Problem],
) -> NetworkPlan | None:
    """The network plan, or None with the reasons added to ``problems``: a field the pod
    cannot run (an ``mtu`` above the pod link's) with its own path, anything else under
    the interfaces."""
    try:
        return plan_for_manifest(spec, settings.ip_families, options)
    except SpecError as err:
        problems.extend(err.problems)
    except LauncherError as err:
        problems.append(Problem(f"{devices_path}.interfaces", str(err)))
    return None


def build(
    spec: VmSpec,
    spec_text: str,
    settings: ManifestSettings = ManifestSettings(),
    source: str = "<spec>",
) -> list[dict[str, Any]]:
    """The ConfigMap and the Pod for ``spec`` (whose file, ``source``, holds
    ``spec_text``); SpecError listing every reason it cannot run."""
    problems: list[Problem] = []
    namespace = settings.namespace or spec.namespace
    spec_text = _spec_text(spec, spec_text, namespace)
    if namespace != spec.namespace:
        spec = dataclasses.replace(spec, namespace=namespace)
    pod_name, config_name = _names(spec, namespace, problems)
    if len(spec_text.encode()) > CONFIGMAP_MAX_BYTES:
        problems.append(
            Problem(
                source,
                f"the spec is {len(spec_text.encode())} bytes; a ConfigMap holds at most "
                f"{CONFIGMAP_MAX_BYTES} (move large cloud-init data out of the spec)",
            )
        )
    _, devices_path = _prefix(spec)
    options = run_options(settings)
    hypervisor = choose_hypervisor(spec, options.hypervisor)
    network = _network(spec, settings, options, devices_path, problems)
    if settings.cpu_allocation_ratio < 1:
        problems.append(
            Problem("--cpu-allocation-ratio", f"{settings.cpu_allocation_ratio} is below 1")
        )
    pod = _Pod()
    _kernel_volume(spec, settings, pod, problems)
    _disk_volumes(spec, settings, pod, problems)
    network_counts = _network_resources(spec, settings, pod, problems)
    if problems:
        raise SpecError(problems)
    assert network is not None

    limits: dict[str, Any] = {}
    requests: dict[str, Any] = {
        "cpu": cpu_request(spec, settings.cpu_allocation_ratio),
        "memory": memory_request(spec),
    }
    if spec.cpu.dedicated:  # Guaranteed QoS: the static CPU manager's exclusive cores
        limits.update(requests)
    for resource, count in {
        **_device_resources(spec, settings, hypervisor),
        **network_counts,
    }.items():
        requests[resource] = limits[resource] = str(count)

    common_volumes = _common_volumes(config_name)
    init = _init_containers(spec, settings, pod, common_volumes)
    container = _launcher_container(
        spec, settings, pod, options=options, network=network, requests=requests, limits=limits
    )
    labels = {
        **dict(spec.labels),
        "app.kubernetes.io/name": "virt-launcher",
        "app.kubernetes.io/instance": spec.name,
    }
    annotations = {**dict(spec.annotations), **network_annotations(spec)}
    security: dict[str, Any] = {
        "fsGroup": VMM_UID,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if network.sysctls:
        security["sysctls"] = [{"name": s.key, "value": s.value} for s in network.sysctls]
    pod_spec: dict[str, Any] = {
        "restartPolicy": settings.restart_policy,
        "terminationGracePeriodSeconds": grace_period(spec, settings.grace_margin_s),
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": security,
        "containers": [container],
        "volumes": common_volumes + pod.volumes,
    }
    if init:
        pod_spec["initContainers"] = init
    if spec.hostname:
        pod_spec["hostname"] = spec.hostname
    if spec.subdomain:
        pod_spec["subdomain"] = spec.subdomain
    meta: dict[str, Any] = {"name": pod_name, "namespace": namespace, "labels": labels}
    if annotations:
        meta["annotations"] = annotations
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": config_name,
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/name": "virt-launcher",
                "app.kubernetes.io/instance": spec.name,
            },
        },
        "data": {SPEC_FILE: spec_text},
    }
    return [config_map, {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": pod_spec}]


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the spec in the ConfigMap) as literal blocks."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render(objects: Iterable[Mapping[str, Any]], source: str | Path | None = None) -> str:
    """The objects as one multi-document YAML stream (``---`` between documents)."""
    head = f"# virt-launcher manifest{f' --spec {source}' if source else ''}\n"
    docs = [yaml.dump(dict(o), Dumper=_Dumper, sort_keys=False, width=100) for o in objects]
    return head + "---\n" + "---\n".join(docs)

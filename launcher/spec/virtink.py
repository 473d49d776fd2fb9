"""Reader for Virtink ``virt.virtink.smartx.com/v1alpha1`` ``VirtualMachine`` manifests.

Called by :func:`launcher.spec.parse`. Paths in problems are the document's own:
``spec.instance.interfaces[1].mac``. Fields are documented in ``docs/spec.md``.
"""

from __future__ import annotations

import ipaddress

from launcher.spec.common import Draft, check_memory, parse_cidr, parse_network_name
from launcher.spec.model import (
    Binding,
    Bridge,
    ContainerDisk,
    Cpu,
    DataVolume,
    Disk,
    Interface,
    KernelBoot,
    Masquerade,
    MultusNetwork,
    Network,
    PersistentVolumeClaim,
    PodNetwork,
    SourceShape,
    Sriov,
    Vdpa,
    Volume,
    VolumeSource,
)
from launcher.spec.parts import (
    pick_one,
    read_cloud_init,
    read_mac,
    read_metadata,
    read_mtu,
    read_name,
)
from launcher.spec.reader import Fields

__all__ = ["SPEC_IGNORED", "read_virtink"]

# Scheduling and probe fields of spec: the pod already reflects them.
SPEC_IGNORED = (
    "runPolicy",
    "nodeSelector",
    "affinity",
    "tolerations",
    "resources",
    "readinessProbe",
    "livenessProbe",
    "enableHotplug",
)
_BINDINGS = ("bridge", "masquerade", "sriov", "vdpa")
_SOURCES = ("pod", "multus")
_VOLUMES = ("containerDisk", "cloudInit", "persistentVolumeClaim", "dataVolume")


def read_virtink(doc: Fields) -> Draft:
    """Read a Virtink VirtualMachine (``apiVersion``/``kind`` already consumed)."""
    draft = Draft(
        shape=SourceShape.VIRTINK,
        interfaces_path="spec.instance.interfaces",
        networks_path="spec.networks",
        disks_path="spec.instance.disks",
        volumes_path="spec.volumes",
        mac_key="mac",
        cpu_path="spec.instance.cpu",
    )
    read_metadata(doc, draft)
    doc.ignore("status")
    spec = doc.mapping("spec", required=True)
    if spec is None:
        return draft
    spec.ignore(*SPEC_IGNORED)
    instance = spec.mapping("instance", required=True)
    if instance is not None:
        _read_instance(instance, draft)
    for item in spec.items("networks"):
        draft.saw("networks", item)
        net = _read_network(item)
        if net is not None:
            draft.networks.append((item.path, net))
    for item in spec.items("volumes"):
        draft.saw("volumes", item)
        vol = _read_volume(item)
        if vol is not None:
            draft.volumes.append((item.path, vol))
    spec.finish()
    return draft


def _read_instance(instance: Fields, draft: Draft) -> None:
    cpu = instance.mapping("cpu")
    if cpu is not None:
        draft.cpu = Cpu(
            sockets=cpu.integer("sockets", minimum=1) or 1,
            cores=cpu.integer("coresPerSocket", minimum=1) or 1,
            dedicated=bool(cpu.boolean("dedicatedCPUPlacement")),
        )
        cpu.ignore("numaNodes")
        cpu.finish()
    memory = instance.mapping("memory", required=True)
    if memory is not None:
        draft.memory_bytes = check_memory(memory, "size", memory.quantity("size", required=True))
        memory.ignore("hugepages")
        memory.finish()
    kernel = instance.mapping("kernel")
    if kernel is not None:
        image = kernel.string("image", required=True)
        cmdline = kernel.string("cmdline", nonempty=False) or ""
        kernel.finish()
        draft.kernel = KernelBoot(image=image, cmdline=cmdline)
    for item in instance.items("disks"):
        draft.saw("disks", item)
        name = read_name(item)
        read_only = bool(item.boolean("readOnly"))
        item.finish()
        if name is not None:
            draft.disks.append((item.path, Disk(name=name, read_only=read_only)))
    for item in instance.items("interfaces"):
        draft.saw("interfaces", item)
        iface = _read_interface(item)
        if iface is not None:
            draft.interfaces.append((item.path, iface))
    instance.unsupported({"fileSystems": "virtio-fs file systems are not supported"})
    instance.finish()


def _read_interface(item: Fields) -> Interface | None:
    name = read_name(item)
    mac = read_mac(item, "mac")
    chosen = pick_one(item, _BINDINGS, "binding")
    binding: Binding = Bridge()  # Virtink's default binding
    if chosen is not None:
        key, inner = chosen
        if key == "masquerade":
            binding = _read_masquerade(inner)
        elif key == "sriov":
            binding = Sriov()
        elif key == "vdpa":
            binding = Vdpa(
                num_queues=inner.integer("numQueues", minimum=1, maximum=256),
                iommu=bool(inner.boolean("iommu")),
            )
        inner.finish()
    mtu = read_mtu(item, binding)
    item.finish()
    return None if name is None else Interface(name=name, binding=binding, mac=mac, mtu=mtu)


def _read_masquerade(inner: Fields) -> Masquerade:
    text = inner.string("cidr")
    net = None if text is None else inner.convert("cidr", text, parse_cidr)
    if isinstance(net, ipaddress.IPv4Network):
        return Masquerade(cidr4=net)
    if isinstance(net, ipaddress.IPv6Network):
        return Masquerade(cidr6=net)
    return Masquerade()


def _read_network(item: Fields) -> Network | None:
    name = read_name(item)
    chosen = pick_one(item, _SOURCES, "network source")
    source: PodNetwork | MultusNetwork | None = None
    if chosen is None:
        if not any(item.present(k) for k in _SOURCES):
            item.problems.add(item.path, "needs a source: pod or multus")
    else:
        key, inner = chosen
        if key == "pod":
            source = PodNetwork()
        else:
            text = inner.string("networkName", required=True)
            nad = None if text is None else inner.convert("networkName", text, parse_network_name)
            source = None if nad is None else MultusNetwork(network_name=nad)
        inner.finish()
    item.finish()
    return None if name is None or source is None else Network(name=name, source=source)


def _read_volume(item: Fields) -> Volume | None:
    name = read_name(item)
    item.unsupported({"containerRootfs": "containerRootfs volumes are not supported"})
    chosen = pick_one(item, _VOLUMES, "volume source")
    source: VolumeSource | None = None
    if chosen is None:
        if not any(item.present(k) for k in _VOLUMES):
            item.problems.add(item.path, f"needs a source: one of {', '.join(_VOLUMES)}")
    else:
        key, inner = chosen
        if key == "containerDisk":
            image = inner.string("image", required=True)
            inner.ignore("imagePullPolicy")
            source = None if image is None else ContainerDisk(image=image)
        elif key == "cloudInit":
            source = read_cloud_init(inner, ("userDataSecretName", "networkDataSecretName"))
        elif key == "persistentVolumeClaim":
            claim = inner.string("claimName", required=True)
            source = None if claim is None else PersistentVolumeClaim(claim_name=claim)
        else:
            volume = inner.string("volumeName", required=True)
            source = None if volume is None else DataVolume(name=volume)
        inner.finish()
    item.finish()
    return None if name is None or source is None else Volume(name=name, source=source)

"""Value parsers and cross-field rules shared by both spec shapes.

Called by ``launcher.spec.virtink`` and ``launcher.spec.kubevirt``: each shape reads
its own field names into a :class:`Draft` (every item with its document path), and
:func:`finalize` applies the rules that span fields — interface/network pairing,
binding/network compatibility, duplicate names, MACs and boot orders, disk/volume
pairing — before building the frozen :class:`~launcher.spec.model.VmSpec`.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from launcher.spec.model import (
    Bridge,
    Cpu,
    Disk,
    Interface,
    InterfaceState,
    KernelBoot,
    ManagedTap,
    Masquerade,
    MultusNetwork,
    Network,
    PodNetwork,
    SourceShape,
    Sriov,
    Vdpa,
    VmSpec,
    Volume,
)
from launcher.spec.reader import Fields, Problems, join, show

__all__ = [
    "MAX_MEMORY",
    "MAX_VCPUS",
    "MIN_MEMORY",
    "Draft",
    "check_memory",
    "finalize",
    "parse_cidr",
    "parse_mac",
    "parse_name",
    "parse_network_name",
    "parse_pci_address",
    "parse_dns_label",
]

MIN_MEMORY = 16 << 20  # 16Mi: below this no Linux guest boots
MAX_MEMORY = 16 << 40  # 16Ti: a typo guard, far above any single node
MAX_VCPUS = 255  # cloud-hypervisor's and QEMU's (without x2apic tricks) ceiling

_MAC = re.compile(r"[0-9a-fA-F]{2}(?P<sep>[:-])(?:[0-9a-fA-F]{2}(?P=sep)){4}[0-9a-fA-F]{2}")
_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,61}[A-Za-z0-9])?")
_DNS_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_PCI = re.compile(r"[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]")
_K8S_NAME = re.compile(r"[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?")


def parse_mac(text: str) -> str:
    """A unicast, non-zero MAC (``aa:bb:..`` or ``AA-BB-..``) in lower-case colon form."""
    if not _MAC.fullmatch(text):
        raise ValueError(f"{show(text)} is not a MAC address")
    mac = text.lower().replace("-", ":")
    if mac == "ff:ff:ff:ff:ff:ff":
        raise ValueError(f"{show(text)} is the broadcast MAC address")
    if mac == "00:00:00:00:00:00":
        raise ValueError(f"{show(text)} is the all-zero MAC address")
    if int(mac[:2], 16) & 1:
        raise ValueError(f"{show(text)} is a multicast MAC address")
    return mac


def parse_name(text: str) -> str:
    """An interface/network/disk/volume name: 1–63 of ``A-Za-z0-9._-``."""
    if not _NAME.fullmatch(text):
        raise ValueError(
            f"{show(text)} is not a valid name (1-63 letters, digits, '-', '.' or '_', "
            "starting and ending with a letter or digit)"
        )
    return text


def parse_dns_label(text: str) -> str:
    """An RFC 1123 label (hostname, subdomain)."""
    if not _DNS_LABEL.fullmatch(text):
        raise ValueError(f"{show(text)} is not a DNS label (1-63 of a-z, 0-9 and '-')")
    return text


def parse_network_name(text: str) -> str:
    """A Multus ``networkName``: ``name`` or ``namespace/name``."""
    parts = text.split("/")
    if len(parts) > 2 or not all(_K8S_NAME.fullmatch(p) for p in parts):
        raise ValueError(
            f"{show(text)} is not a NetworkAttachmentDefinition name (name or namespace/name)"
        )
    return text


def parse_pci_address(text: str) -> str:
    """A guest PCI address ``DDDD:BB:DD.F`` in lower case."""
    if not _PCI.fullmatch(text):
        raise ValueError(f"{show(text)} is not a PCI address (like 0000:07:00.0)")
    return text.lower()


def parse_cidr(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A masquerade CIDR with room for network, gateway and guest (>= 4 addresses)."""
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError as err:
        raise ValueError(f"{show(text)} is not a CIDR (like 10.0.2.0/30)") from err
    if "/" not in text:
        raise ValueError(f"{show(text)} has no prefix length (like 10.0.2.0/30)")
    if net.network_address != ipaddress.ip_interface(text).ip:
        raise ValueError(f"{show(text)} has host bits set (the network is {net})")
    if net.num_addresses < 4:
        raise ValueError(f"{show(text)} is too small: it needs at least 4 addresses")
    return net


@dataclass
class Draft:
    """What a shape reader found, every item paired with its document path."""

    shape: SourceShape
    interfaces_path: str
    networks_path: str
    disks_path: str
    volumes_path: str
    mac_key: str
    name: str | None = None
    namespace: str = "default"
    uid: str | None = None
    hostname: str | None = None
    subdomain: str | None = None
    cpu: Cpu = field(default_factory=Cpu)
    cpu_path: str = ""
    memory_bytes: int | None = None
    kernel: KernelBoot | None = None
    interfaces: list[tuple[str, Interface]] = field(default_factory=list)
    networks: list[tuple[str, Network]] = field(default_factory=list)
    disks: list[tuple[str, Disk]] = field(default_factory=list)
    volumes: list[tuple[str, Volume]] = field(default_factory=list)
    network_interface_multiqueue: bool = False
    termination_grace_period_s: int = 30
    annotations: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    # Names of every list item, also those that had problems: pairing rules use them so
    # one bad network does not also report its interface as unpaired.
    seen: dict[str, set[str]] = field(default_factory=dict)

    def saw(self, kind: str, item: Fields) -> None:
        """Remember the ``name`` of an item of list ``kind``, valid or not."""
        name = item.data.get("name")
        if isinstance(name, str):
            self.seen.setdefault(kind, set()).add(name)


def _unique(problems: Problems, items: list[tuple[str, str]], what: str) -> dict[str, str]:
    """First path of each value; later duplicates are problems."""
    seen: dict[str, str] = {}
    for path, value in items:
        if value in seen:
            problems.add(path, f"{what} {show(value)} is already used by {seen[value]}")
        else:
            seen[value] = path
    return seen


def finalize(draft: Draft, problems: Problems) -> VmSpec | None:
    """Apply the cross-field rules; the :class:`VmSpec`, or None if any problem exists."""
    _check_cpu(draft, problems)
    _check_network_pairs(draft, problems)
    disks = _check_disk_pairs(draft, problems)
    _check_boot_order(draft, problems)
    if problems or draft.name is None or draft.memory_bytes is None:
        return None
    return VmSpec(
        shape=draft.shape,
        name=draft.name,
        namespace=draft.namespace,
        uid=draft.uid,
        hostname=draft.hostname,
        subdomain=draft.subdomain,
        cpu=draft.cpu,
        memory_bytes=draft.memory_bytes,
        kernel=draft.kernel,
        disks=tuple(disks),
        volumes=tuple(v for _, v in draft.volumes),
        interfaces=tuple(i for _, i in draft.interfaces),
        networks=tuple(n for _, n in draft.networks),
        network_interface_multiqueue=draft.network_interface_multiqueue,
        termination_grace_period_s=draft.termination_grace_period_s,
        annotations=tuple(sorted(draft.annotations.items())),
        labels=tuple(sorted(draft.labels.items())),
    )


def check_memory(fields: Fields, key: str, size: int | None) -> int | None:
    """``size`` if it is within 16Mi..16Ti, else a problem at ``key`` and None."""
    if size is None:
        return None
    if size < MIN_MEMORY:
        fields.problems.add(fields.at(key), f"{size} bytes is less than the minimum of 16Mi")
        return None
    if size > MAX_MEMORY:
        fields.problems.add(fields.at(key), f"{size} bytes is more than the maximum of 16Ti")
        return None
    return size


def _check_cpu(draft: Draft, problems: Problems) -> None:
    vcpus = draft.cpu.vcpus
    if vcpus > MAX_VCPUS:
        problems.add(
            draft.cpu_path,
            f"{draft.cpu.sockets} sockets x {draft.cpu.cores} cores x {draft.cpu.threads} "
            f"threads = {vcpus} vCPUs, more than the maximum of {MAX_VCPUS}",
        )


def _check_network_pairs(draft: Draft, problems: Problems) -> None:
    iface_names = _unique(
        problems, [(join(p, "name"), i.name) for p, i in draft.interfaces], "interface name"
    )
    _unique(problems, [(join(p, "name"), n.name) for p, n in draft.networks], "network name")
    _unique(
        problems,
        [(join(p, draft.mac_key), i.mac) for p, i in draft.interfaces if i.mac is not None],
        "MAC address",
    )
    networks = {n.name: n for _, n in draft.networks}
    pod_network: str | None = None
    default_multus: str | None = None
    for path, net in draft.networks:
        if isinstance(net.source, PodNetwork):
            if pod_network is not None:
                problems.add(
                    join(path, "pod"),
                    f"{show(net.name)} is a second pod network ({pod_network} is the first)",
                )
            else:
                pod_network = join(path, "pod")
        elif net.source.default:
            if default_multus is not None:
                problems.add(
                    join(path, "multus.default"),
                    f"{show(net.name)} is a second default network ({default_multus} is the first)",
                )
            else:
                default_multus = join(path, "multus.default")
    if pod_network is not None and default_multus is not None:
        problems.add(
            default_multus,
            f"a multus default network replaces the pod network, so it cannot be used "
            f"together with the pod network {pod_network}",
        )
    for path, iface in draft.interfaces:
        if iface.name not in networks:
            if iface.name in draft.seen.get("networks", set()):
                continue  # its network had problems of its own

            problems.add(
                join(path, "name"),
                f"interface {show(iface.name)} has no network of the same name in "
                f"{draft.networks_path}",
            )
            continue
        _check_binding(path, iface, networks[iface.name], problems)
    for path, net in draft.networks:
        if net.name not in iface_names and net.name not in draft.seen.get("interfaces", set()):
            problems.add(
                join(path, "name"),
                f"network {show(net.name)} has no interface of the same name in "
                f"{draft.interfaces_path}",
            )


def _check_binding(path: str, iface: Interface, net: Network, problems: Problems) -> None:
    on_pod = isinstance(net.source, PodNetwork) or (
        isinstance(net.source, MultusNetwork) and net.source.default
    )
    binding = iface.binding
    kind = binding.kind.value
    if isinstance(binding, Masquerade) and not isinstance(net.source, PodNetwork):
        problems.add(
            join(path, kind),
            f"masquerade needs the pod network, but {show(net.name)} is a multus network",
        )
    if isinstance(binding, Sriov | Vdpa) and on_pod:
        problems.add(
            join(path, kind),
            f"{kind} needs a multus (secondary) network, but {show(net.name)} is the pod network",
        )
    if iface.state is InterfaceState.ABSENT and (
        not isinstance(binding, Bridge | ManagedTap) or on_pod
    ):
        problems.add(
            join(path, "state"),
            f'"absent" (hot unplug) is only supported for bridge and managedtap interfaces '
            f"on secondary networks, not for {show(iface.name)} ({kind} on "
            f"{'the pod network' if on_pod else 'a multus network'})",
        )


def _check_disk_pairs(draft: Draft, problems: Problems) -> list[Disk]:
    disk_names = _unique(problems, [(join(p, "name"), d.name) for p, d in draft.disks], "disk name")
    volume_names = _unique(
        problems, [(join(p, "name"), v.name) for p, v in draft.volumes], "volume name"
    )
    for path, disk in draft.disks:
        if disk.name not in volume_names and disk.name not in draft.seen.get("volumes", set()):
            problems.add(
                join(path, "name"),
                f"disk {show(disk.name)} has no volume of the same name in {draft.volumes_path}",
            )
    disks = [d for _, d in draft.disks]
    # A volume without a disk gets a virtio disk, as KubeVirt's defaulting does.
    disks.extend(
        Disk(name=v.name)
        for _, v in draft.volumes
        if v.name not in disk_names and v.name not in draft.seen.get("disks", set())
    )
    return disks


def _check_boot_order(draft: Draft, problems: Problems) -> None:
    orders: list[tuple[str, str]] = [
        (join(p, "bootOrder"), str(d.boot_order))
        for p, d in draft.disks
        if d.boot_order is not None
    ]
    orders += [
        (join(p, "bootOrder"), str(i.boot_order))
        for p, i in draft.interfaces
        if i.boot_order is not None
    ]
    seen: dict[str, str] = {}
    for path, order in orders:
        if order in seen:
            problems.add(path, f"boot order {order} is already used by {seen[order]}")
        else:
            seen[order] = path

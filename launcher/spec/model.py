"""The normalized, frozen VM spec every other part of the launcher reads.

``launcher.spec.load()`` turns a Virtink ``VirtualMachine`` or a KubeVirt
``VirtualMachine``/``VirtualMachineInstance`` manifest into a :class:`VmSpec`. Nothing
downstream sees raw dicts: network planning, the hypervisor config and the status
endpoint all consume these types. Every value here has already been validated (MACs
normalized to lower-case colon form, quantities parsed to integers, CIDRs parsed).
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field

from launcher.status.listen import DEFAULT_STATUS_PORT

__all__ = [
    "Binding",
    "BindingKind",
    "Bridge",
    "CloudInitNoCloud",
    "ContainerDisk",
    "Cpu",
    "DataVolume",
    "DhcpOptions",
    "DhcpPrivateOption",
    "Disk",
    "EmptyDisk",
    "HostDisk",
    "Interface",
    "InterfaceState",
    "KernelBoot",
    "ManagedTap",
    "Masquerade",
    "MultusNetwork",
    "Network",
    "NetworkSource",
    "PersistentVolumeClaim",
    "PodNetwork",
    "Port",
    "PortRange",
    "RESERVED_PORTS",
    "MIGRATION_PORTS",
    "ISTIO_PORTS",
    "ISTIO_ANNOTATION",
    "reserved_ports",
    "reserved_port_clashes",
    "port_clash",
    "range_clash",
    "Protocol",
    "Sriov",
    "SourceShape",
    "Vdpa",
    "VmSpec",
    "Volume",
    "VolumeSource",
]


class SourceShape(enum.StrEnum):
    """Which API the manifest was written against."""

    VIRTINK = "virtink"  # virt.virtink.smartx.com/v1alpha1 VirtualMachine
    KUBEVIRT_VM = "kubevirt-vm"  # kubevirt.io/v1 VirtualMachine (spec.template.spec)
    KUBEVIRT_VMI = "kubevirt-vmi"  # kubevirt.io/v1 VirtualMachineInstance


class Protocol(enum.StrEnum):
    """Transport protocol of a forwarded port (KubeVirt ``ports[].protocol``)."""

    TCP = "TCP"
    UDP = "UDP"


@dataclass(frozen=True, slots=True)
class Port:
    """A port forwarded into the guest in masquerade mode."""

    port: int
    protocol: Protocol = Protocol.TCP
    name: str | None = None


@dataclass(frozen=True, slots=True)
class PortRange:
    """A range of ports forwarded into the guest in masquerade mode (KubeVirt VEP 168
    ``portRanges``), ``start`` to ``end`` inclusive."""

    start: int
    end: int
    protocol: Protocol = Protocol.TCP

    def __str__(self) -> str:
        return f"{self.protocol.value} {self.start}-{self.end}"


#: KubeVirt's live-migration ports.
MIGRATION_PORTS = (49152, 49153)
#: Istio's sidecar ports, when the pod has one (``sidecar.istio.io/inject: "true"``).
ISTIO_PORTS = (15000, 15001, 15004, 15006, 15008, 15009, 15020, 15021, 15053, 15090)
ISTIO_ANNOTATION = "sidecar.istio.io/inject"
#: what uses each reserved port, for messages
RESERVED_PORTS = {49152: "KubeVirt migration", 49153: "KubeVirt migration"}


def reserved_ports(
    annotations: dict[str, str], status_port: int = DEFAULT_STATUS_PORT
) -> dict[int, str]:
    """Ports the pod itself uses, never DNATed into a masquerade guest, and what uses each:
    the status endpoint, migration, and Istio's when the pod is injected."""
    ports = {status_port: "the launcher's status endpoint", **RESERVED_PORTS}
    if annotations.get(ISTIO_ANNOTATION, "").lower() == "true":
        ports.update({p: "the Istio sidecar" for p in ISTIO_PORTS})
    return ports


def port_clash(port: Port, reserved: dict[int, str]) -> str | None:
    """The problem with forwarding ``port`` when the pod itself uses it (the message of
    its ``…ports[k].port`` field); None when it is free."""
    user = reserved.get(port.port)
    return None if user is None else f"{port.port} is a port the pod itself uses ({user})"


def range_clash(rng: PortRange, reserved: dict[int, str]) -> str | None:
    """The problem with forwarding ``rng`` when it holds a port the pod itself uses (the
    message of its ``…portRanges[k]`` entry); None when it holds none."""
    for number, user in sorted(reserved.items()):
        if rng.start <= number <= rng.end:
            return f"{rng} overlaps port {number}, which the pod itself uses ({user})"
    return None


def reserved_port_clashes(
    ports: tuple[Port, ...], ranges: tuple[PortRange, ...], reserved: dict[int, str]
) -> list[tuple[str, str]]:
    """Each listed port and range of a masquerade interface that holds a reserved port,
    as (field relative to the interface, message): ``("ports[1].port", "49152 is …")``.

    The spec reader applies the same rule at load with the default status port; ``plan``
    and ``run`` apply it again with the status port really configured (``--status-listen``).
    """
    found = [
        (f"ports[{k}].port", msg)
        for k, port in enumerate(ports)
        if (msg := port_clash(port, reserved)) is not None
    ]
    found += [
        (f"portRanges[{k}]", msg)
        for k, rng in enumerate(ranges)
        if (msg := range_clash(rng, reserved)) is not None
    ]
    return found


class BindingKind(enum.StrEnum):
    """How a guest NIC is connected to its network."""

    BRIDGE = "bridge"
    MASQUERADE = "masquerade"
    SRIOV = "sriov"
    VDPA = "vdpa"
    MANAGEDTAP = "managedtap"


@dataclass(frozen=True, slots=True)
class Bridge:
    """L2 bridge binding: the guest takes the pod interface's addresses over DHCP."""

    kind: BindingKind = field(default=BindingKind.BRIDGE, init=False)


DEFAULT_MASQUERADE_CIDR4 = ipaddress.IPv4Network("10.0.2.0/30")
DEFAULT_MASQUERADE_CIDR6 = ipaddress.IPv6Network("fd10:0:2::/120")


@dataclass(frozen=True, slots=True)
class Masquerade:
    """NAT binding: the guest gets an internal address behind the pod IP.

    ``ports`` empty means every port is forwarded (Virtink's and KubeVirt's default).
    """

    cidr4: ipaddress.IPv4Network = DEFAULT_MASQUERADE_CIDR4
    cidr6: ipaddress.IPv6Network = DEFAULT_MASQUERADE_CIDR6
    ports: tuple[Port, ...] = ()
    port_ranges: tuple[PortRange, ...] = ()
    kind: BindingKind = field(default=BindingKind.MASQUERADE, init=False)


@dataclass(frozen=True, slots=True)
class Sriov:
    """VF passthrough via VFIO."""

    kind: BindingKind = field(default=BindingKind.SRIOV, init=False)


@dataclass(frozen=True, slots=True)
class Vdpa:
    """A vhost-vdpa device (Virtink ``vdpa: {numQueues, iommu}``)."""

    num_queues: int | None = None
    iommu: bool = False
    kind: BindingKind = field(default=BindingKind.VDPA, init=False)


@dataclass(frozen=True, slots=True)
class ManagedTap:
    """KubeVirt's ``binding: {name: managedtap}`` (also ``l2bridge``): bridge + tap, the
    guest takes the pod MAC, and the CNI's own DHCP/RA serve it (the launcher serves none)."""

    name: str = "managedtap"  # the plugin name as written: managedtap or l2bridge
    kind: BindingKind = field(default=BindingKind.MANAGEDTAP, init=False)


Binding = Bridge | Masquerade | Sriov | Vdpa | ManagedTap


@dataclass(frozen=True, slots=True)
class DhcpPrivateOption:
    """A KubeVirt ``dhcpOptions.privateOptions`` entry (option 224–254, string value)."""

    option: int
    value: str


@dataclass(frozen=True, slots=True)
class DhcpOptions:
    """KubeVirt per-interface ``dhcpOptions``."""

    boot_file_name: str | None = None
    tftp_server_name: str | None = None
    ntp_servers: tuple[ipaddress.IPv4Address, ...] = ()
    private_options: tuple[DhcpPrivateOption, ...] = ()


class InterfaceState(enum.StrEnum):
    """KubeVirt ``interfaces[].state``: ``absent`` asks for a hot unplug; ``down`` keeps the
    NIC plugged with its link down (no carrier in the guest), ``up`` is the default."""

    UP = "up"
    DOWN = "down"
    ABSENT = "absent"


@dataclass(frozen=True, slots=True)
class Interface:
    """A guest NIC as the guest sees it; ``network`` is the name of its :class:`Network`."""

    name: str
    binding: Binding
    mac: str | None = None  # "02:00:00:aa:bb:cc", lower case, colons
    model: str = "virtio"
    pci_address: str | None = None  # guest PCI address, "0000:07:00.0"
    boot_order: int | None = None
    dhcp_options: DhcpOptions | None = None
    state: InterfaceState = InterfaceState.UP
    mtu: int | None = None  # override of the pod link's MTU (576-65535; docs/network.md)

    @property
    def network(self) -> str:
        """Interfaces and networks are paired by name in both APIs."""
        return self.name


@dataclass(frozen=True, slots=True)
class PodNetwork:
    """The pod's primary interface (eth0)."""

    vm_network_cidr: str | None = None  # KubeVirt pod.vmNetworkCIDR, informational


@dataclass(frozen=True, slots=True)
class MultusNetwork:
    """A secondary network; ``network_name`` is ``name`` or ``namespace/name``."""

    network_name: str
    default: bool = False


NetworkSource = PodNetwork | MultusNetwork


@dataclass(frozen=True, slots=True)
class Network:
    """Where an interface's traffic goes."""

    name: str
    source: NetworkSource


@dataclass(frozen=True, slots=True)
class ContainerDisk:
    """A disk image shipped in a container image (mounted into the pod by kubelet)."""

    image: str
    path: str | None = None  # KubeVirt containerDisk.path inside the image


@dataclass(frozen=True, slots=True)
class CloudInitNoCloud:
    """cloud-init NoCloud data (KubeVirt ``cloudInitNoCloud``, Virtink ``cloudInit``)."""

    user_data: str | None = None
    network_data: str | None = None


@dataclass(frozen=True, slots=True)
class PersistentVolumeClaim:
    """A PVC mounted (filesystem mode: ``disk.img`` inside) or attached as a block device."""

    claim_name: str
    read_only: bool = False


@dataclass(frozen=True, slots=True)
class HostDisk:
    """A disk image at a path on the node (KubeVirt ``hostDisk``)."""

    path: str
    type: str = "Disk"  # "Disk" or "DiskOrCreate"
    capacity_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class DataVolume:
    """A CDI DataVolume, backed by a PVC of the same name."""

    name: str


@dataclass(frozen=True, slots=True)
class EmptyDisk:
    """A sparse scratch disk created at start."""

    capacity_bytes: int


VolumeSource = (
    ContainerDisk | CloudInitNoCloud | PersistentVolumeClaim | HostDisk | DataVolume | EmptyDisk
)


@dataclass(frozen=True, slots=True)
class Volume:
    """A named volume a disk refers to."""

    name: str
    source: VolumeSource


@dataclass(frozen=True, slots=True)
class Disk:
    """A guest disk backed by the volume of the same name."""

    name: str
    bus: str = "virtio"
    read_only: bool = False
    cdrom: bool = False
    boot_order: int | None = None


@dataclass(frozen=True, slots=True)
class KernelBoot:
    """Direct kernel boot.

    Virtink: ``instance.kernel {image, cmdline}`` (mounted at /mnt/virtink-kernel/vmlinux).
    KubeVirt: ``firmware.kernelBoot {container {image, kernelPath, initrdPath}, kernelArgs}``.
    """

    image: str | None = None
    kernel_path: str | None = None
    initrd_path: str | None = None
    cmdline: str = ""


@dataclass(frozen=True, slots=True)
class Cpu:
    """Guest CPU topology."""

    sockets: int = 1
    cores: int = 1
    threads: int = 1
    dedicated: bool = False

    @property
    def vcpus(self) -> int:
        """Total vCPUs (also the multiqueue queue count)."""
        return self.sockets * self.cores * self.threads


@dataclass(frozen=True, slots=True)
class VmSpec:
    """The whole normalized VM spec."""

    shape: SourceShape
    name: str
    namespace: str = "default"
    uid: str | None = None
    hostname: str | None = None
    subdomain: str | None = None
    cpu: Cpu = Cpu()
    memory_bytes: int = 1 << 30
    kernel: KernelBoot | None = None
    disks: tuple[Disk, ...] = ()
    volumes: tuple[Volume, ...] = ()
    interfaces: tuple[Interface, ...] = ()
    networks: tuple[Network, ...] = ()
    network_interface_multiqueue: bool = False
    termination_grace_period_s: int = 30
    annotations: tuple[tuple[str, str], ...] = ()
    labels: tuple[tuple[str, str], ...] = ()

    def interface_path(self, index: int) -> str:
        """The manifest path of ``interfaces[index]``, for problems found after load
        (``spec.template.spec.domain.devices.interfaces[0]``)."""
        base = {
            SourceShape.VIRTINK: "spec.instance",
            SourceShape.KUBEVIRT_VM: "spec.template.spec.domain.devices",
            SourceShape.KUBEVIRT_VMI: "spec.domain.devices",
        }[self.shape]
        return f"{base}.interfaces[{index}]"

    def network_for(self, interface: Interface) -> Network:
        """The network an interface is attached to (validation guarantees it exists)."""
        for net in self.networks:
            if net.name == interface.network:
                return net
        raise KeyError(interface.network)

    def volume_for(self, disk: Disk) -> Volume:
        """The volume a disk is backed by (validation guarantees it exists)."""
        for vol in self.volumes:
            if vol.name == disk.name:
                return vol
        raise KeyError(disk.name)

    def annotation(self, key: str) -> str | None:
        """A pod/template annotation value, or None."""
        return dict(self.annotations).get(key)

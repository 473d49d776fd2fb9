"""Reader for KubeVirt ``kubevirt.io/v1`` ``VirtualMachine`` and ``VirtualMachineInstance``.

Called by :func:`launcher.spec.parse`. A VirtualMachine's instance spec lives at
``spec.template.spec`` (labels and annotations at ``spec.template.metadata``); a
VirtualMachineInstance's at ``spec``. Problems carry those document paths, e.g.
``spec.template.spec.domain.devices.interfaces[0].macAddress``. Fields KubeVirt has but
the launcher does not act on are accepted and ignored (the lists below, documented in
``docs/spec.md``); anything else unknown is refused with its path.
"""

from __future__ import annotations

import dataclasses
import ipaddress

from launcher.spec.common import (
    Draft,
    check_memory,
    parse_cidr,
    parse_dns_label,
    parse_network_name,
    parse_pci_address,
)
from launcher.spec.model import (
    Binding,
    Bridge,
    CloudInitNoCloud,
    ContainerDisk,
    Cpu,
    DataVolume,
    DhcpOptions,
    DhcpPrivateOption,
    Disk,
    EmptyDisk,
    HostDisk,
    Interface,
    InterfaceState,
    KernelBoot,
    ManagedTap,
    Masquerade,
    MultusNetwork,
    Network,
    PersistentVolumeClaim,
    PodNetwork,
    Port,
    PortRange,
    Protocol,
    SourceShape,
    Sriov,
    Volume,
    VolumeSource,
    port_clash,
    range_clash,
    reserved_ports,
)
from launcher.spec.parts import (
    METADATA_IGNORED,
    pick_one,
    read_cloud_init,
    read_mac,
    read_metadata,
    read_mtu,
    read_name,
)
from launcher.spec.reader import Fields, show

__all__ = [
    "DEVICES_IGNORED",
    "DOMAIN_IGNORED",
    "VMI_SPEC_IGNORED",
    "VM_SPEC_IGNORED",
    "read_kubevirt_vm",
    "read_kubevirt_vmi",
]

VM_SPEC_IGNORED = ("running", "runStrategy", "dataVolumeTemplates", "updateVolumesStrategy")
VMI_SPEC_IGNORED = (
    "nodeSelector",
    "affinity",
    "tolerations",
    "topologySpreadConstraints",
    "evictionStrategy",
    "schedulerName",
    "priorityClassName",
    "readinessProbe",
    "livenessProbe",
    "dnsPolicy",
    "dnsConfig",
    "accessCredentials",
    "startStrategy",
    "architecture",
)
DOMAIN_IGNORED = ("machine", "features", "clock", "chassis", "ioThreadsPolicy", "ioThreads")
DEVICES_IGNORED = (
    "rng",
    "autoattachGraphicsDevice",
    "autoattachSerialConsole",
    "autoattachMemBalloon",
    "autoattachInputDevice",
    "autoattachVSOCK",
    "autoattachPodInterface",
    "blockMultiQueue",
    "useVirtioTransitional",
    "inputs",
    "watchdog",
    "sound",
    "tpm",
    "clientPassthrough",
    "disableHotplug",
    "logSerialConsole",
)
_BINDINGS = ("bridge", "masquerade", "sriov", "binding")
_UNSUPPORTED_BINDINGS = ("slirp", "macvtap", "passt")
#: network binding plugins (``binding: {name: …}``) the launcher implements itself
_PLUGINS = ("managedtap", "l2bridge")
_SOURCES = ("pod", "multus")
_VOLUMES = (
    "containerDisk",
    "cloudInitNoCloud",
    "persistentVolumeClaim",
    "hostDisk",
    "dataVolume",
    "emptyDisk",
)
_UNSUPPORTED_VOLUMES = (
    "cloudInitConfigDrive",
    "configMap",
    "secret",
    "serviceAccount",
    "downwardAPI",
    "downwardMetrics",
    "sysprep",
    "ephemeral",
    "memoryDump",
    "containerPath",
)
_MODELS = ("virtio", "e1000", "e1000e", "igb", "ne2k_pci", "pcnet", "rtl8139")
_BUSES = ("virtio", "sata", "scsi", "usb")


def read_kubevirt_vm(doc: Fields) -> Draft:
    """Read a KubeVirt VirtualMachine (``apiVersion``/``kind`` already consumed)."""
    base = "spec.template.spec"
    draft = _draft(SourceShape.KUBEVIRT_VM, base)
    read_metadata(doc, draft, labels=False)
    doc.ignore("status")
    spec = doc.mapping("spec", required=True)
    if spec is None:
        return draft
    spec.ignore(*VM_SPEC_IGNORED)
    spec.unsupported(
        {
            key: f"{key} is not supported: give the launcher the expanded instance spec"
            for key in ("instancetype", "preference")
        }
    )
    template = spec.mapping("template", required=True)
    if template is not None:
        meta = template.mapping("metadata")
        if meta is not None:
            draft.labels = meta.string_map("labels")
            draft.annotations = meta.string_map("annotations")
            meta.ignore("name", "namespace", *METADATA_IGNORED)
            meta.finish()
        vmi = template.mapping("spec", required=True)
        if vmi is not None:
            _read_vmi_spec(vmi, draft)
        template.finish()
    spec.finish()
    return draft


def read_kubevirt_vmi(doc: Fields) -> Draft:
    """Read a KubeVirt VirtualMachineInstance (``apiVersion``/``kind`` already consumed)."""
    draft = _draft(SourceShape.KUBEVIRT_VMI, "spec")
    read_metadata(doc, draft)
    doc.ignore("status")
    vmi = doc.mapping("spec", required=True)
    if vmi is not None:
        _read_vmi_spec(vmi, draft)
    return draft


def _draft(shape: SourceShape, base: str) -> Draft:
    return Draft(
        shape=shape,
        interfaces_path=f"{base}.domain.devices.interfaces",
        networks_path=f"{base}.networks",
        disks_path=f"{base}.domain.devices.disks",
        volumes_path=f"{base}.volumes",
        mac_key="macAddress",
        cpu_path=f"{base}.domain.cpu",
    )


def _read_vmi_spec(vmi: Fields, draft: Draft) -> None:
    vmi.ignore(*VMI_SPEC_IGNORED)
    grace = vmi.integer("terminationGracePeriodSeconds", minimum=0, maximum=86400)
    if grace is not None:
        draft.termination_grace_period_s = grace
    for key in ("hostname", "subdomain"):
        text = vmi.string(key)
        if text is not None:
            setattr(draft, key, vmi.convert(key, text, parse_dns_label))
    domain = vmi.mapping("domain", required=True)
    if domain is not None:
        _read_domain(domain, draft)
    cidrs: dict[str, Masquerade] = {}
    for item in vmi.items("networks"):
        draft.saw("networks", item)
        net = _read_network(item, cidrs)
        if net is not None:
            draft.networks.append((item.path, net))
    for item in vmi.items("volumes"):
        draft.saw("volumes", item)
        vol = _read_volume(item)
        if vol is not None:
            draft.volumes.append((item.path, vol))
    vmi.finish()
    _apply_vm_network_cidrs(draft, cidrs)


def _read_domain(domain: Fields, draft: Draft) -> None:
    domain.ignore(*DOMAIN_IGNORED)
    cpu = domain.mapping("cpu")
    if cpu is not None:
        draft.cpu = Cpu(
            sockets=cpu.integer("sockets", minimum=1) or 1,
            cores=cpu.integer("cores", minimum=1) or 1,
            threads=cpu.integer("threads", minimum=1) or 1,
            dedicated=bool(cpu.boolean("dedicatedCpuPlacement")),
        )
        cpu.ignore("model", "features", "isolateEmulatorThread", "numa", "realtime", "maxSockets")
        cpu.finish()
    memory = domain.mapping("memory")
    if memory is not None:
        draft.memory_bytes = check_memory(memory, "guest", memory.quantity("guest"))
        memory.ignore("hugepages", "maxGuest")
        memory.finish()
    resources = domain.mapping("resources")
    requests_memory = False
    if resources is not None:
        requests = resources.mapping("requests")
        if requests is not None:
            requests_memory = requests.present("memory")
            requested = requests.quantity("memory")
            requests.ignore(*(k for k in requests.data if isinstance(k, str)))
            requests.finish()
            if draft.memory_bytes is None:
                draft.memory_bytes = check_memory(requests, "memory", requested)
        resources.ignore("limits", "overcommitGuestOverhead")
        resources.finish()
    memory_given = (memory is not None and memory.present("guest")) or requests_memory
    if draft.memory_bytes is None and not memory_given:
        domain.problems.add(
            domain.at("memory.guest"), "is required (or domain.resources.requests.memory)"
        )
    firmware = domain.mapping("firmware")
    if firmware is not None:
        kernel_boot = firmware.mapping("kernelBoot")
        if kernel_boot is not None:
            draft.kernel = _read_kernel_boot(kernel_boot)
        firmware.ignore("uuid", "serial", "bootloader", "acpi")
        firmware.finish()
    devices = domain.mapping("devices")
    if devices is not None:
        _read_devices(devices, draft)
    domain.finish()


def _read_kernel_boot(kb: Fields) -> KernelBoot | None:
    args = kb.string("kernelArgs", nonempty=False) or ""
    container = kb.mapping("container", required=True)
    kb.finish()
    if container is None:
        return None
    image = container.string("image", required=True)
    kernel_path = container.string("kernelPath")
    initrd_path = container.string("initrdPath")
    container.ignore("imagePullPolicy", "imagePullSecret")
    container.finish()
    if kernel_path is None and initrd_path is None:
        kb.problems.add(container.path, "needs kernelPath, initrdPath or both")
        return None
    if args and kernel_path is None:
        kb.problems.add(kb.at("kernelArgs"), "needs container.kernelPath to be set")
        return None
    return KernelBoot(image=image, kernel_path=kernel_path, initrd_path=initrd_path, cmdline=args)


def _read_devices(devices: Fields, draft: Draft) -> None:
    devices.ignore(*DEVICES_IGNORED)
    devices.unsupported(
        {
            "gpus": "GPU passthrough is not supported",
            "hostDevices": "host device passthrough is not supported (use an sriov interface)",
            "filesystems": "virtio-fs file systems are not supported",
        }
    )
    draft.network_interface_multiqueue = bool(devices.boolean("networkInterfaceMultiqueue"))
    for item in devices.items("interfaces"):
        draft.saw("interfaces", item)
        iface = _read_interface(item, reserved_ports(draft.annotations))
        if iface is not None:
            draft.interfaces.append((item.path, iface))
    for item in devices.items("disks"):
        draft.saw("disks", item)
        disk = _read_disk(item)
        if disk is not None:
            draft.disks.append((item.path, disk))
    devices.finish()


def _read_interface(item: Fields, reserved: dict[int, str]) -> Interface | None:
    name = read_name(item)
    mac = read_mac(item, "macAddress")
    item.unsupported({key: f"the {key} binding is not supported" for key in _UNSUPPORTED_BINDINGS})
    chosen = pick_one(item, _BINDINGS, "binding")
    binding: Binding = Bridge()  # KubeVirt's default binding
    if chosen is not None:
        key, inner = chosen
        if key == "masquerade":
            binding = Masquerade()
        elif key == "sriov":
            binding = Sriov()
        elif key == "binding":
            plugin = inner.string("name", required=True)
            if plugin is not None and plugin not in _PLUGINS:
                inner.problems.add(
                    inner.at("name"), f"{show(plugin)} is not one of {', '.join(_PLUGINS)}"
                )
            elif plugin is not None:
                binding = ManagedTap(name=plugin)
        inner.finish()
    ports = _read_ports(item, binding, reserved)
    ranges = _read_port_ranges(item, binding, ports, reserved)
    if (ports or ranges) and isinstance(binding, Masquerade):
        binding = dataclasses.replace(binding, ports=tuple(p for _, p in ports), port_ranges=ranges)
    mtu = read_mtu(item, binding)
    model = item.string("model") or "virtio"
    if model not in _MODELS:
        item.problems.add(item.at("model"), f"{show(model)} is not one of {', '.join(_MODELS)}")
    text = item.string("pciAddress")
    pci = None if text is None else item.convert("pciAddress", text, parse_pci_address)
    boot_order = item.integer("bootOrder", minimum=1)
    state_text = item.string("state")
    state = InterfaceState.UP
    if state_text is not None:
        try:
            state = InterfaceState(state_text)
        except ValueError:
            item.problems.add(
                item.at("state"), f"{show(state_text)} is not one of absent, down, up"
            )
    dhcp = item.mapping("dhcpOptions")
    dhcp_options = None if dhcp is None else _read_dhcp_options(dhcp)
    item.ignore("tag", "acpiIndex")
    item.finish()
    if name is None:
        return None
    return Interface(
        name=name,
        binding=binding,
        mac=mac,
        model=model,
        pci_address=pci,
        boot_order=boot_order,
        dhcp_options=dhcp_options,
        state=state,
        mtu=mtu,
    )


def _read_ports(item: Fields, binding: Binding, reserved: dict[int, str]) -> list[tuple[str, Port]]:
    """``ports``: unique per protocol, none a port the pod itself uses (the status
    endpoint, migration, Istio's when injected: :func:`reserved_ports`)."""
    ports: list[tuple[str, Port]] = []
    seen: dict[tuple[Protocol, int], str] = {}
    for entry in item.items("ports"):
        number = entry.integer("port", required=True, minimum=1, maximum=65535)
        name = entry.string("name")
        proto_text = entry.string("protocol") or "TCP"
        protocol = Protocol.TCP
        try:
            protocol = Protocol(proto_text.upper())
        except ValueError:
            entry.problems.add(entry.at("protocol"), f"{show(proto_text)} is not one of TCP, UDP")
        entry.finish()
        if number is None:
            continue
        key = (protocol, number)
        if key in seen:
            entry.problems.add(
                entry.at("port"),
                f"{protocol.value} port {number} is already forwarded by {seen[key]}",
            )
            continue
        port = Port(port=number, protocol=protocol, name=name)
        clash = port_clash(port, reserved)
        if clash is not None:
            entry.problems.add(entry.at("port"), clash)
            continue
        seen[key] = entry.path
        ports.append((entry.path, port))
    if ports and not isinstance(binding, Masquerade):
        item.problems.add(
            item.at("ports"),
            f"ports are only forwarded with the masquerade binding, not {binding.kind.value}",
        )
    return ports


def _read_protocol(entry: Fields) -> Protocol | None:
    text = entry.string("protocol") or "TCP"
    try:
        return Protocol(text.upper())
    except ValueError:
        entry.problems.add(entry.at("protocol"), f"{show(text)} is not one of TCP, UDP")
        return None


def _read_port_ranges(
    item: Fields, binding: Binding, ports: list[tuple[str, Port]], reserved: dict[int, str]
) -> tuple[PortRange, ...]:
    """``portRanges`` (KubeVirt VEP 168): no overlap with each other, with ``ports`` or
    with a port the pod itself uses; each problem names both sides."""
    ranges: list[tuple[str, PortRange]] = []
    for entry in item.items("portRanges"):
        start = entry.integer("start", required=True, minimum=1, maximum=65535)
        end = entry.integer("end", required=True, minimum=1, maximum=65535)
        protocol = _read_protocol(entry)
        entry.finish()
        if start is None or end is None or protocol is None:
            continue
        if end < start:
            entry.problems.add(entry.at("end"), f"{end} is below start {start}")
            continue
        rng = PortRange(start=start, end=end, protocol=protocol)
        clash = _range_clash(rng, ranges, ports)
        if clash is not None:
            entry.problems.add(entry.path, f"{rng} overlaps {clash}")
            continue
        clash = range_clash(rng, reserved)
        if clash is not None:
            entry.problems.add(entry.path, clash)
            continue
        ranges.append((entry.path, rng))
    if ranges and not isinstance(binding, Masquerade):
        item.problems.add(
            item.at("portRanges"),
            f"port ranges are only forwarded with the masquerade binding, not {binding.kind.value}",
        )
    return tuple(r for _, r in ranges)


def _range_clash(
    rng: PortRange,
    ranges: list[tuple[str, PortRange]],
    ports: list[tuple[str, Port]],
) -> str | None:
    """Which other range or listed port ``rng`` overlaps, as words naming it; None when
    nothing (reserved ports: :func:`range_clash`)."""
    for path, other in ranges:
        if other.protocol is rng.protocol and other.start <= rng.end and rng.start <= other.end:
            return f"{other} of {path}"
    for path, port in ports:
        if port.protocol is rng.protocol and rng.start <= port.port <= rng.end:
            return f"{port.protocol.value} port {port.port} of {path}"
    return None


def _read_dhcp_options(dhcp: Fields) -> DhcpOptions:
    ntp: list[ipaddress.IPv4Address] = []
    for path, text in dhcp.strings("ntpServers"):
        try:
            ntp.append(ipaddress.IPv4Address(text))
        except ValueError:
            dhcp.problems.add(path, f"{show(text)} is not an IPv4 address")
    private: list[DhcpPrivateOption] = []
    seen: dict[int, str] = {}
    for entry in dhcp.items("privateOptions"):
        option = entry.integer("option", required=True, minimum=224, maximum=254)
        value = entry.string("value", required=True, nonempty=False)
        entry.finish()
        if option is None or value is None:
            continue
        if option in seen:
            entry.problems.add(
                entry.at("option"), f"option {option} is already set by {seen[option]}"
            )
            continue
        seen[option] = entry.path
        private.append(DhcpPrivateOption(option=option, value=value))
    options = DhcpOptions(
        boot_file_name=dhcp.string("bootFileName"),
        tftp_server_name=dhcp.string("tftpServerName"),
        ntp_servers=tuple(ntp),
        private_options=tuple(private),
    )
    dhcp.finish()
    return options


def _read_disk(item: Fields) -> Disk | None:
    name = read_name(item)
    boot_order = item.integer("bootOrder", minimum=1)
    item.unsupported({"lun": "lun disks are not supported"})
    item.ignore(
        "serial",
        "cache",
        "io",
        "dedicatedIOThread",
        "tag",
        "shareable",
        "errorPolicy",
        "blockSize",
    )
    chosen = pick_one(item, ("disk", "cdrom"), "disk type")
    cdrom = False
    bus = "virtio"
    read_only = False
    if chosen is not None:
        key, inner = chosen
        cdrom = key == "cdrom"
        bus = inner.string("bus") or ("sata" if cdrom else "virtio")
        if bus not in _BUSES:
            inner.problems.add(inner.at("bus"), f"{show(bus)} is not one of {', '.join(_BUSES)}")
        flag = inner.boolean("readonly")
        read_only = cdrom if flag is None else flag
        inner.ignore("pciAddress", "tray")
        inner.finish()
    item.finish()
    if name is None:
        return None
    return Disk(name=name, bus=bus, read_only=read_only, cdrom=cdrom, boot_order=boot_order)


def _read_network(item: Fields, cidrs: dict[str, Masquerade]) -> Network | None:
    name = read_name(item)
    chosen = pick_one(item, _SOURCES, "network source")
    source: PodNetwork | MultusNetwork | None = None
    if chosen is None:
        if not any(item.present(k) for k in _SOURCES):
            item.problems.add(item.path, "needs a source: pod or multus")
    else:
        key, inner = chosen
        if key == "pod":
            source, masquerade = _read_pod(inner)
            if name is not None:
                cidrs[name] = masquerade
        else:
            text = inner.string("networkName", required=True)
            nad = None if text is None else inner.convert("networkName", text, parse_network_name)
            default = bool(inner.boolean("default"))
            source = None if nad is None else MultusNetwork(network_name=nad, default=default)
        inner.finish()
    item.finish()
    return None if name is None or source is None else Network(name=name, source=source)


def _read_pod(pod: Fields) -> tuple[PodNetwork, Masquerade]:
    """The pod network and the masquerade CIDRs it asks for (KubeVirt's defaults if unset)."""
    masquerade = Masquerade()
    text4 = pod.string("vmNetworkCIDR")
    net4 = None if text4 is None else pod.convert("vmNetworkCIDR", text4, parse_cidr)
    if isinstance(net4, ipaddress.IPv4Network):
        masquerade = dataclasses.replace(masquerade, cidr4=net4)
    elif net4 is not None:
        pod.problems.add(pod.at("vmNetworkCIDR"), f"{show(text4)} is not an IPv4 CIDR")
    text6 = pod.string("vmIPv6NetworkCIDR")
    net6 = None if text6 is None else pod.convert("vmIPv6NetworkCIDR", text6, parse_cidr)
    if isinstance(net6, ipaddress.IPv6Network):
        masquerade = dataclasses.replace(masquerade, cidr6=net6)
    elif net6 is not None:
        pod.problems.add(pod.at("vmIPv6NetworkCIDR"), f"{show(text6)} is not an IPv6 CIDR")
    return PodNetwork(vm_network_cidr=text4), masquerade


def _apply_vm_network_cidrs(draft: Draft, cidrs: dict[str, Masquerade]) -> None:
    """``pod.vmNetworkCIDR``/``vmIPv6NetworkCIDR`` set the masquerade interface's CIDRs."""
    for index, (path, iface) in enumerate(draft.interfaces):
        wanted = cidrs.get(iface.name)
        if wanted is not None and isinstance(iface.binding, Masquerade):
            binding = dataclasses.replace(iface.binding, cidr4=wanted.cidr4, cidr6=wanted.cidr6)
            draft.interfaces[index] = (path, dataclasses.replace(iface, binding=binding))


def _read_volume(item: Fields) -> Volume | None:
    name = read_name(item)
    item.unsupported({key: f"{key} volumes are not supported" for key in _UNSUPPORTED_VOLUMES})
    chosen = pick_one(item, _VOLUMES, "volume source")
    source: VolumeSource | None = None
    if chosen is None:
        if not any(item.present(k) for k in _VOLUMES):
            item.problems.add(item.path, f"needs a source: one of {', '.join(_VOLUMES)}")
    else:
        key, inner = chosen
        source = _read_volume_source(key, inner)
        inner.finish()
    item.finish()
    return None if name is None or source is None else Volume(name=name, source=source)


def _read_volume_source(key: str, inner: Fields) -> VolumeSource | None:
    if key == "containerDisk":
        image = inner.string("image", required=True)
        path = inner.string("path")
        inner.ignore("imagePullPolicy", "imagePullSecret")
        return None if image is None else ContainerDisk(image=image, path=path)
    if key == "cloudInitNoCloud":
        cloud: CloudInitNoCloud | None = read_cloud_init(
            inner, ("secretRef", "networkDataSecretRef")
        )
        return cloud
    if key == "persistentVolumeClaim":
        claim = inner.string("claimName", required=True)
        read_only = bool(inner.boolean("readOnly"))
        inner.ignore("hotpluggable")
        return None if claim is None else PersistentVolumeClaim(claim, read_only=read_only)
    if key == "hostDisk":
        path = inner.string("path", required=True)
        kind = inner.string("type") or "Disk"
        capacity = inner.quantity("capacity")
        inner.ignore("shared")
        if kind not in ("Disk", "DiskOrCreate"):
            inner.problems.add(inner.at("type"), f"{show(kind)} is not one of Disk, DiskOrCreate")
        elif kind == "DiskOrCreate" and capacity is None and not inner.present("capacity"):
            inner.problems.add(inner.at("capacity"), "is required when type is DiskOrCreate")
        return None if path is None else HostDisk(path=path, type=kind, capacity_bytes=capacity)
    if key == "dataVolume":
        dv = inner.string("name", required=True)
        inner.ignore("hotpluggable")
        return None if dv is None else DataVolume(name=dv)
    capacity = inner.quantity("capacity", required=True)
    return None if capacity is None else EmptyDisk(capacity_bytes=capacity)

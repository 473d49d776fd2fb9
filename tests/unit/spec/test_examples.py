"""Every bundled example normalizes to the VmSpec its manifest describes."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from pathlib import Path

import pytest

from launcher.spec import (
    BindingKind,
    Bridge,
    CloudInitNoCloud,
    ContainerDisk,
    Cpu,
    InterfaceState,
    KernelBoot,
    Masquerade,
    PodNetwork,
    Port,
    PortRange,
    Protocol,
    SourceShape,
    Sriov,
    Vdpa,
    VmSpec,
    load,
)

EXAMPLES = Path(__file__).parents[3] / "examples"
V4 = ipaddress.IPv4Network
V6 = ipaddress.IPv6Network


def kinds(spec: VmSpec) -> list[tuple[str, BindingKind, str]]:
    """(interface, binding kind, network source) for each interface."""
    out = []
    for iface in spec.interfaces:
        src = spec.network_for(iface).source
        where = "pod" if isinstance(src, PodNetwork) else f"multus:{src.network_name}"
        out.append((iface.name, iface.binding.kind, where))
    return out


def virtink_common(spec: VmSpec, name: str) -> None:
    assert spec.shape is SourceShape.VIRTINK
    assert (spec.namespace, spec.name) == ("default", name)
    assert spec.cpu == Cpu()
    assert spec.memory_bytes == 1 << 30
    assert spec.kernel == KernelBoot(
        image="smartxworks/virtink-kernel-5.15.12", cmdline="console=ttyS0 root=/dev/vda rw"
    )
    assert [d.name for d in spec.disks] == ["ubuntu", "cloud-init"]
    assert spec.volume_for(spec.disks[0]).source == ContainerDisk(
        image="smartxworks/virtink-container-disk-ubuntu"
    )
    cloud = spec.volume_for(spec.disks[1]).source
    assert isinstance(cloud, CloudInitNoCloud)
    assert cloud.user_data is not None and cloud.user_data.startswith("#cloud-config\n")


def check_virtink_pod_bridge(spec: VmSpec) -> None:
    virtink_common(spec, "ubuntu-bridge")
    assert kinds(spec) == [("pod", BindingKind.BRIDGE, "pod")]
    assert spec.interfaces[0].binding == Bridge()
    assert spec.interfaces[0].mac is None


def check_virtink_pod_masquerade(spec: VmSpec) -> None:
    virtink_common(spec, "ubuntu-masquerade")
    assert spec.interfaces[0].binding == Masquerade(
        cidr4=V4("10.0.2.0/30"), cidr6=V6("fd10:0:2::/120"), ports=()
    )


def check_virtink_pod_masquerade_cidr(spec: VmSpec) -> None:
    virtink_common(spec, "ubuntu-masquerade-cidr")
    assert spec.interfaces[0].binding == Masquerade(cidr4=V4("10.10.0.0/29"))


def check_virtink_multus_ovs_bridge(spec: VmSpec) -> None:
    virtink_common(spec, "ubuntu-ovs")
    assert kinds(spec) == [("ovs", BindingKind.BRIDGE, "multus:ovs-br1")]


def check_virtink_sriov(spec: VmSpec) -> None:
    virtink_common(spec, "ubuntu-sriov")
    assert kinds(spec) == [("sriov", BindingKind.SRIOV, "multus:mellanox-sriov-25g")]


def check_virtink_vdpa(spec: VmSpec) -> None:
    virtink_common(spec, "ubuntu-vdpa")
    assert kinds(spec) == [
        ("pod", BindingKind.BRIDGE, "pod"),
        ("vdpa1", BindingKind.VDPA, "multus:offload-ovn1"),
        ("vdpa2", BindingKind.VDPA, "multus:offload-ovn2"),
    ]
    assert spec.interfaces[1].binding == Vdpa(num_queues=9, iommu=False)


def kubevirt_common(spec: VmSpec, name: str, memory: int = 1 << 30) -> None:
    assert spec.shape is SourceShape.KUBEVIRT_VM
    assert spec.name == name
    assert spec.memory_bytes == memory
    assert [(d.name, d.bus, d.cdrom) for d in spec.disks] == [
        ("containerdisk", "virtio", False),
        ("cloudinitdisk", "virtio", False),
    ]
    assert spec.volume_for(spec.disks[0]).source == ContainerDisk(
        image="quay.io/containerdisks/fedora:40"
    )


def check_kubevirt_masquerade_ports(spec: VmSpec) -> None:
    kubevirt_common(spec, "example-vm")
    assert kinds(spec) == [("default", BindingKind.MASQUERADE, "pod")]
    assert spec.interfaces[0].binding == Masquerade(ports=(Port(80, Protocol.TCP),))
    assert spec.termination_grace_period_s == 30


def check_kubevirt_masquerade_dual_stack(spec: VmSpec) -> None:
    kubevirt_common(spec, "example-vm-ipv6")
    binding = spec.interfaces[0].binding
    assert isinstance(binding, Masquerade)
    assert binding.cidr6 == V6("fd10:0:2::/120")
    cloud = spec.volume_for(spec.disks[1]).source
    assert isinstance(cloud, CloudInitNoCloud)
    assert cloud.user_data is None
    assert cloud.network_data is not None
    assert "addresses: [ fd10:0:2::2/120 ]" in cloud.network_data


def check_kubevirt_linux_bridge_secondary(spec: VmSpec) -> None:
    kubevirt_common(spec, "example-vm")
    assert kinds(spec) == [
        ("default", BindingKind.MASQUERADE, "pod"),
        ("bridge-net", BindingKind.BRIDGE, "multus:a-bridge-network"),
    ]


def check_kubevirt_sriov(spec: VmSpec) -> None:
    kubevirt_common(spec, "example-vm", memory=2 << 30)
    assert kinds(spec) == [("nic1", BindingKind.SRIOV, "multus:sriov-network")]
    assert spec.interfaces[0].binding == Sriov()


def check_kubevirt_dpdk(spec: VmSpec) -> None:
    kubevirt_common(spec, "rhel-dpdk-vm", memory=8 << 30)
    assert spec.cpu == Cpu(sockets=1, cores=5, threads=2, dedicated=True)
    assert spec.cpu.vcpus == 10
    assert spec.network_interface_multiqueue is True
    assert kinds(spec) == [
        ("default", BindingKind.MASQUERADE, "pod"),
        ("nic-east", BindingKind.SRIOV, "multus:dpdk-net"),
    ]
    assert (spec.interfaces[1].model, spec.interfaces[1].pci_address) == (
        "virtio",
        "0000:07:00.0",
    )
    assert spec.annotation("cpu-quota.crio.io") == "disable"
    assert len(spec.annotations) == 3


def check_kubevirt_ovn_secondary(spec: VmSpec) -> None:
    kubevirt_common(spec, "vm-server", memory=1024 << 20)
    assert kinds(spec) == [("secondary", BindingKind.BRIDGE, "multus:l2-network")]


def check_kubevirt_hotplug(spec: VmSpec) -> None:
    kubevirt_common(spec, "vm-fedora")
    assert kinds(spec) == [
        ("defaultnetwork", BindingKind.MASQUERADE, "pod"),
        ("secondary-nic", BindingKind.BRIDGE, "multus:bridge-conf"),
    ]
    assert [i.state for i in spec.interfaces] == [InterfaceState.UP, InterfaceState.UP]


def check_kubevirt_hotplug_absent(spec: VmSpec) -> None:
    kubevirt_common(spec, "vm-fedora")
    assert [i.state for i in spec.interfaces] == [InterfaceState.UP, InterfaceState.ABSENT]


def check_kubevirt_istio(spec: VmSpec) -> None:
    kubevirt_common(spec, "vm-istio", memory=1024 * 10**6)
    assert spec.termination_grace_period_s == 180
    assert spec.annotation("sidecar.istio.io/inject") == "true"
    assert dict(spec.labels) == {"kubevirt.io/vm": "vm-istio", "app": "vm-istio"}
    assert kinds(spec) == [("default", BindingKind.MASQUERADE, "pod")]


def check_kubevirt_cloud_init_ip(spec: VmSpec) -> None:
    kubevirt_common(spec, "example-vm-static-ip")
    cloud = spec.volume_for(spec.disks[1]).source
    assert isinstance(cloud, CloudInitNoCloud)
    assert cloud.network_data is not None
    assert "10.10.10.14/24" in cloud.network_data
    assert kinds(spec)[1] == ("secondary", BindingKind.BRIDGE, "multus:bridge-conf")


def check_demo_vm(spec: VmSpec) -> None:
    assert spec.shape is SourceShape.KUBEVIRT_VMI
    assert (spec.namespace, spec.name, spec.hostname) == ("default", "demo-vm", "demo-vm")
    assert spec.cpu.vcpus == 1
    assert spec.memory_bytes == 256 << 20
    assert spec.kernel == KernelBoot(
        image="localhost/virt-launcher-demo-kernel:latest",
        kernel_path="/boot/vmlinuz",
        initrd_path="/boot/initrd.img",
        cmdline="console=ttyS0 quiet",
    )
    assert kinds(spec) == [("pod", BindingKind.BRIDGE, "pod")]
    assert spec.interfaces[0].mac == "02:00:00:00:00:01"
    assert spec.termination_grace_period_s == 10
    assert spec.disks == ()


def check_kubevirt_legacy_nic(spec: VmSpec) -> None:
    assert spec.shape is SourceShape.KUBEVIRT_VM
    assert kinds(spec) == [("default", BindingKind.BRIDGE, "pod")]
    assert spec.interfaces[0].model == "e1000e"
    assert [(d.name, d.bus) for d in spec.disks] == [("rootdisk", "sata")]


def check_kubevirt_mtu_override(spec: VmSpec) -> None:
    assert spec.shape is SourceShape.KUBEVIRT_VMI
    assert kinds(spec) == [("default", BindingKind.MASQUERADE, "pod")]
    assert spec.interfaces[0].mtu == 1400


def check_kubevirt_masquerade_port_ranges(spec: VmSpec) -> None:
    binding = spec.interfaces[0].binding
    assert isinstance(binding, Masquerade)
    assert binding.ports == (Port(22, Protocol.TCP, "ssh"),)
    assert binding.port_ranges == (
        PortRange(27000, 27100, Protocol.TCP),
        PortRange(27000, 27100, Protocol.UDP),
    )


def check_kubevirt_link_down(spec: VmSpec) -> None:
    assert kinds(spec) == [
        ("default", BindingKind.MASQUERADE, "pod"),
        ("storage", BindingKind.BRIDGE, "multus:storage-net"),
    ]
    assert [i.state for i in spec.interfaces] == [InterfaceState.UP, InterfaceState.DOWN]


def check_kubevirt_managedtap(spec: VmSpec) -> None:
    assert kinds(spec) == [("default", BindingKind.MANAGEDTAP, "pod")]


CHECKS: dict[str, Callable[[VmSpec], None]] = {
    name.removeprefix("check_").replace("_", "-") + ".yaml": fn
    for name, fn in globals().items()
    if name.startswith("check_")
}


def test_every_example_has_a_check() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.yaml")) == sorted(CHECKS)


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_example_normalizes(name: str) -> None:
    CHECKS[name](load(EXAMPLES / name))

"""Multus network → pod interface mapping, and the SR-IOV/vDPA/secondary-bridge plan.

The examples are planned against network-status fixtures (tests/data/network-status) and
a fake sysfs//dev tree, as ``virt-launcher plan`` would on a node.
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from pathlib import Path

import pytest

from launcher.errors import NetworkError, PodInfoError
from launcher.network import PlanOptions, plan
from launcher.network.multus import MappingRule, kubevirt_hashed_name, map_interfaces
from launcher.podinfo import PodInfo, parse_network_status
from launcher.spec import load
from launcher.spec.model import (
    Bridge,
    Interface,
    MultusNetwork,
    Network,
    PodNetwork,
    SourceShape,
    Sriov,
    VmSpec,
)

from .fake_sysfs import FakeHost
from .helpers import pod_link, pod_state

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "examples"
DATA = ROOT / "tests" / "data" / "network-status"


def status(name: str) -> PodInfo:
    return PodInfo(network_status=parse_network_status((DATA / name).read_text()), source=name)


def inline(*entries: str) -> PodInfo:
    return PodInfo(network_status=parse_network_status("[" + ",".join(entries) + "]"))


def spec_with(
    *networks: tuple[str, str | None], shape: SourceShape = SourceShape.KUBEVIRT_VM
) -> VmSpec:
    """(spec network name, multus networkName or None for the pod network)."""
    return VmSpec(
        shape=shape,
        name="vm1",
        namespace="ns",
        interfaces=tuple(Interface(name=n, binding=Bridge()) for n, _ in networks),
        networks=tuple(Network(n, MultusNetwork(m) if m else PodNetwork()) for n, m in networks),
    )


def test_kubevirt_hashed_name_matches_sha256sum() -> None:
    # printf %s secondary | sha256sum | cut -c1-11  (coreutils, not this code)
    assert kubevirt_hashed_name("secondary") == "podc0f69e19ba2"
    assert kubevirt_hashed_name("bridge-net") == "pod03b731d2111"
    assert len(kubevirt_hashed_name("x" * 300)) == 14


def test_by_network_status_name_namespace_defaults_to_the_vms() -> None:
    spec = spec_with(("default", None), ("a", "blue"), ("b", "other/red"))
    info = inline(
        '{"name": "cni", "interface": "eth0", "default": true}',
        '{"name": "other/red", "interface": "red0"}',
        '{"name": "ns/blue", "interface": "blue0"}',
    )
    m = map_interfaces(spec, info)
    assert [(x.pod_interface, x.rule) for x in m.values()] == [
        ("eth0", MappingRule.POD_NETWORK),
        ("blue0", MappingRule.NETWORK_STATUS),
        ("red0", MappingRule.NETWORK_STATUS),
    ]
    assert m["a"].network_name == "ns/blue" and m["a"].status is not None


def test_same_attachment_twice_taken_in_order_preferring_the_expected_name() -> None:
    spec = spec_with(("a", "blue"), ("b", "blue"), shape=SourceShape.VIRTINK)
    info = inline(
        '{"name": "ns/blue", "interface": "net1"}', '{"name": "ns/blue", "interface": "net0"}'
    )
    m = map_interfaces(spec, info)
    assert (m["a"].pod_interface, m["b"].pod_interface) == ("net0", "net1")


def test_missing_entry_is_an_error_naming_the_network() -> None:
    spec = spec_with(("default", None), ("sec", "blue"))
    info = inline('{"name": "ns/red", "interface": "net1"}')
    with pytest.raises(PodInfoError, match=r"network 'sec' \(ns/blue\) has no entry .*'ns/red'"):
        map_interfaces(spec, info)


@pytest.mark.parametrize(
    ("shape", "links", "expected"),
    [
        (SourceShape.VIRTINK, (), ("net2", MappingRule.VIRTINK_ORDINAL)),
        (SourceShape.VIRTINK, ("net1",), ("net1", MappingRule.MULTUS_ORDINAL)),
        (SourceShape.KUBEVIRT_VM, (), ("podc0f69e19ba2", MappingRule.KUBEVIRT_HASHED)),
        (SourceShape.KUBEVIRT_VMI, ("net1",), ("net1", MappingRule.KUBEVIRT_ORDINAL)),
        (
            SourceShape.KUBEVIRT_VM,
            ("net1", "podc0f69e19ba2"),
            ("podc0f69e19ba2", MappingRule.KUBEVIRT_HASHED),
        ),
    ],
)
def test_fallbacks_without_network_status(
    shape: SourceShape, links: tuple[str, ...], expected: tuple[str, MappingRule]
) -> None:
    # Virtink counts every network (net<i>, i = index in spec.networks); the first Multus
    # network of [pod, sriov-ish, secondary] is the third entry, so net2
    spec = spec_with(("default", None), ("secondary", "blue"), shape=shape)
    spec = replace(spec, networks=(spec.networks[0], Network("x", PodNetwork()), spec.networks[1]))
    m = map_interfaces(spec, None, links)
    assert (m["secondary"].pod_interface, m["secondary"].rule) == expected


def test_multus_default_network_is_eth0() -> None:
    spec = replace(
        spec_with(("main", "blue")),
        networks=(Network("main", MultusNetwork("blue", default=True)),),
    )
    m = map_interfaces(spec, inline('{"name": "ns/blue", "interface": "eth0", "default": true}'))
    assert (m["main"].pod_interface, m["main"].rule) == ("eth0", MappingRule.MULTUS_DEFAULT)


# --- the plan, per example ------------------------------------------------------------


@pytest.fixture
def host(tmp_path: Path) -> FakeHost:
    h = FakeHost(tmp_path)
    h.add_pf()
    return h


def test_kubevirt_sriov_example(host: FakeHost) -> None:
    host.add_vf("0000:3b:02.2")
    spec = load(EXAMPLES / "kubevirt-sriov.yaml")
    info = status("sriov-cni.json")
    spec = replace(spec, networks=(Network("nic1", MultusNetwork("sriov-network")),))
    p = plan(spec, pod_state(), PlanOptions(podinfo=info, host=host.paths))
    assert p.nics == () and p.devices == ()
    (vf,) = p.vfio
    assert vf.sysfs_path == str(host.root / "sys/bus/pci/devices/0000:3b:02.2")
    assert vf.guest_pci_address is None
    (nic,) = p.passthrough
    assert nic.mac == "5e:2b:71:0b:25:10"
    assert nic.ips == (ipaddress.ip_interface("192.168.77.21/24"),)
    assert nic.device_source == "network-status device-info"
    assert nic.mapping.rule is MappingRule.NETWORK_STATUS
    assert nic.mapping.pod_interface == "podbaffdcb099b"
    out = p.to_dict()
    assert out["interfaces"][0]["rule"] == "network-status"
    assert out["passthrough"][0]["device"]["sysfs_path"].endswith("0000:3b:02.2")


def test_dpdk_example_vf_at_guest_pci_address_from_device_plugin(host: FakeHost) -> None:
    host.add_vf("0000:3b:02.2")
    host.add_vf("0000:3b:02.3", group="43")
    spec = load(EXAMPLES / "kubevirt-dpdk.yaml")
    info = PodInfo(
        pci_devices=(("INTEL_COM_DPDK", ("0000:3b:02.3",)),),
        network_resources=(("nic-east", "intel.com/dpdk"),),
    )
    p = plan(spec, pod_state(), PlanOptions(podinfo=info, host=host.paths))
    assert [n.binding.value for n in p.nics] == ["masquerade"]
    (vf,) = p.vfio
    assert vf.sysfs_path.endswith("/sys/bus/pci/devices/0000:3b:02.3")
    assert vf.guest_pci_address == "0000:07:00.0"
    assert p.passthrough[0].device_source == "environment variable PCIDEVICE_INTEL_COM_DPDK"
    assert p.passthrough[0].mapping.rule is MappingRule.KUBEVIRT_HASHED
    assert p.passthrough[0].mapping.pod_interface == "podbed46c69ce0"


def test_device_plugin_addresses_handed_out_once(host: FakeHost) -> None:
    for i, addr in enumerate(("0000:3b:02.2", "0000:3b:02.3", "0000:3b:02.4")):
        host.add_vf(addr, group=str(50 + i))
    spec = VmSpec(
        shape=SourceShape.VIRTINK,
        name="vm",
        namespace="ns",
        interfaces=tuple(Interface(n, Sriov()) for n in ("a", "b", "c")),
        networks=tuple(Network(n, MultusNetwork("sriov")) for n in ("a", "b", "c")),
    )
    # Virtink asks for net0..net2: c's entry (net2) has the VF; a and b share the pool
    info = PodInfo(
        network_status=parse_network_status(
            '[{"name": "ns/sriov", "interface": "net2", "device-info": {"type": "pci",'
            ' "pci": {"pci-address": "0000:3b:02.2"}}}, {"name": "ns/sriov"},'
            ' {"name": "ns/sriov"}]'
        ),
        pci_devices=(("X", ("0000:3b:02.2", "0000:3b:02.3", "0000:3b:02.4")),),
    )
    p = plan(spec, pod_state(), PlanOptions(podinfo=info, host=host.paths))
    assert [v.sysfs_path[-12:] for v in p.vfio] == ["0000:3b:02.3", "0000:3b:02.4", "0000:3b:02.2"]
    assert [v.id for v in p.vfio] == ["hostdev0", "hostdev1", "hostdev2"]


def test_sriov_without_any_address_is_a_clear_error(host: FakeHost) -> None:
    spec = load(EXAMPLES / "virtink-sriov.yaml")
    with pytest.raises(
        PodInfoError, match=r"network 'sriov' \(default/mellanox-sriov-25g\): no PCI"
    ):
        plan(spec, pod_state(), PlanOptions(podinfo=PodInfo(), host=host.paths))
    info = inline('{"name": "default/mellanox-sriov-25g", "interface": "net0"}')
    with pytest.raises(PodInfoError, match=r"network-status entry has no device-info"):
        plan(spec, pod_state(), PlanOptions(podinfo=info, host=host.paths))


def test_sriov_sysfs_failure_surfaces_in_the_plan(host: FakeHost) -> None:
    host.add_vf("0000:3b:02.2", driver="mlx5_core")
    spec = load(EXAMPLES / "virtink-sriov.yaml")
    info = PodInfo(pci_devices=(("MELLANOX_SRIOV_25G", ("0000:3b:02.2",)),))
    with pytest.raises(NetworkError, match=r"is bound to mlx5_core, not vfio-pci"):
        plan(spec, pod_state(), PlanOptions(podinfo=info, host=host.paths))


def test_virtink_vdpa_example(host: FakeHost) -> None:
    host.add_vdpa(1)
    host.add_vdpa(2)
    spec = load(EXAMPLES / "virtink-vdpa.yaml")
    p = plan(spec, pod_state(), PlanOptions(podinfo=status("vdpa.json"), host=host.paths))
    assert [n.pod_interface for n in p.nics] == ["eth0"]
    assert [(d.id, d.path[-12:], d.num_queues, d.iommu) for d in p.vdpa] == [
        ("vdpa1", "vhost-vdpa-1", 9, False),
        ("vdpa2", "vhost-vdpa-2", 9, False),
    ]
    assert [d.path for d in p.vdpa] == [
        str(host.root / "dev/vhost-vdpa-1"),
        str(host.root / "dev/vhost-vdpa-2"),
    ]
    assert [(m.interface, m.pod_interface, m.rule.value) for m in p.interfaces] == [
        ("pod", "eth0", "pod-network"),
        ("vdpa1", "net1", "network-status"),
        ("vdpa2", "net2", "network-status"),
    ]
    assert p.passthrough[0].mac == "8a:22:19:7d:40:01"


def test_vdpa_failures(host: FakeHost) -> None:
    spec = load(EXAMPLES / "virtink-vdpa.yaml")
    opts = PlanOptions(podinfo=status("vdpa.json"), host=host.paths)
    with pytest.raises(
        NetworkError, match=r"network 'vdpa1': vDPA device /dev/vhost-vdpa-1 is missing"
    ):
        plan(spec, pod_state(), opts)
    virtio = (DATA / "vdpa.json").read_text().replace('"vhost"', '"virtio"', 1)
    info = PodInfo(network_status=parse_network_status(virtio))
    with pytest.raises(NetworkError, match=r"uses driver 'virtio': bind it to vhost_vdpa"):
        plan(spec, pod_state(), replace(opts, podinfo=info))
    pci = inline(
        '{"name": "default/offload-ovn1", "device-info": {"type": "pci", "pci": {}}}',
        '{"name": "default/offload-ovn2", "interface": "net2"}',
    )
    with pytest.raises(PodInfoError, match=r"'vdpa1' .*device-info is of type 'pci', not vdpa"):
        plan(spec, pod_state(), replace(opts, podinfo=pci))
    with pytest.raises(
        PodInfoError, match=r"no vhost-vdpa device: there is no Multus network-status"
    ):
        plan(spec, pod_state(), replace(opts, podinfo=PodInfo()))


def test_secondary_bridge_with_ipam_gets_dhcp_without_a_default_route() -> None:
    spec = load(EXAMPLES / "kubevirt-linux-bridge-secondary.yaml")
    sec = pod_link(
        "pod03b731d2111", v4="10.10.10.14/24", v6=None, gw4=None, gw6=None, mac="02:6b:8e:1c:44:10"
    )
    p = plan(spec, pod_state(pod_link(), sec), PlanOptions(podinfo=status("multus-bridge.json")))
    nic = p.nics[1]
    assert nic.pod_interface == "pod03b731d2111" and nic.binding.value == "bridge"
    assert nic.dhcp4 is not None and str(nic.dhcp4.leases[0].address) == "10.10.10.14/24"
    assert nic.dhcp4.router is None and nic.dhcp4.routes == ()
    assert nic.device.mac == "02:6b:8e:1c:44:10"
    assert p.interfaces[1].rule is MappingRule.NETWORK_STATUS


def test_secondary_bridge_without_ipam_is_plain_l2() -> None:
    spec = load(EXAMPLES / "virtink-multus-ovs-bridge.yaml")
    sec = pod_link("net0", v4=None, v6=None, gw4=None, gw6=None, mac="02:00:00:00:00:10")
    p = plan(spec, pod_state(pod_link(), sec))
    (nic,) = p.nics
    assert (nic.pod_interface, p.interfaces[0].rule) == ("net0", MappingRule.VIRTINK_ORDINAL)
    assert nic.dhcp4 is None and nic.dhcp6 is None and nic.ra is None
    assert nic.bridge.addresses == ()
    assert nic.pod_port is not None and nic.pod_port.remove_addresses == ()
    assert nic.nft.bridge_postrouting == ()
    assert all("saddr ip" not in r and "ip saddr" not in r for r in nic.nft.bridge_prerouting)
    assert any("ether saddr != 02:00:00:00:00:10 drop" in r for r in nic.nft.bridge_prerouting)
    assert "udp dport" not in p.nftables


def test_pod_network_without_address_still_refused() -> None:
    spec = spec_with(("default", None))
    bare = pod_link(v4=None, v6=None, gw4=None, gw6=None)
    with pytest.raises(NetworkError, match=r"has no IPv4 or global IPv6 address"):
        plan(spec, pod_state(bare))


def test_unplugged_network_may_be_missing_from_network_status() -> None:
    spec = load(EXAMPLES / "kubevirt-hotplug-absent.yaml")
    info = inline('{"name": "kindnet", "interface": "eth0", "default": true}')
    m = map_interfaces(spec, info)
    assert (m["secondary-nic"].rule, m["secondary-nic"].status) == (
        MappingRule.KUBEVIRT_HASHED,
        None,
    )
    p = plan(spec, pod_state(), PlanOptions(podinfo=info))
    assert [n.name for n in p.nics] == ["defaultnetwork"]
    # the same network still plugged in must be there
    plugged = replace(spec, interfaces=(spec.interfaces[0], Interface("secondary-nic", Bridge())))
    with pytest.raises(PodInfoError, match=r"network 'secondary-nic' \(default/bridge-conf\)"):
        map_interfaces(plugged, info)


def test_the_pod_network_interface_can_be_named_otherwise() -> None:
    spec = spec_with(("default", None), ("sec", "blue"))
    m = map_interfaces(spec, None, ("ens5", "net1"), pod_interface="ens5")
    assert (m["default"].pod_interface, m["default"].rule) == ("ens5", MappingRule.POD_NETWORK)
    assert m["sec"].pod_interface == "net1"  # Multus secondaries keep their names

"""cloud-init NoCloud seeds: content per example, network-config merging, the ISO read back."""

from __future__ import annotations

import io
import ipaddress
import logging
import subprocess
from dataclasses import replace
from pathlib import Path

import pycdlib
import pytest
import yaml

from hypervisor.machine import VfioDevice
from launcher.cloudinit import (
    SeedContent,
    build_iso,
    build_seeds,
    generated_network_config,
    merge_network_config,
    seed_content,
)
from launcher.errors import SpecError, VolumeError
from launcher.network import PlanOptions, plan
from launcher.network.multus import InterfaceMapping, MappingRule, PassthroughNic
from launcher.network.plan import NetworkPlan
from launcher.podinfo import PodInfo, parse_network_status
from launcher.spec import load
from launcher.spec.model import BindingKind, CloudInitNoCloud, Volume
from launcher.volumes import FileState, VolumeLayout, resolve

from .network.helpers import pod_link, pod_state

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
VF_MAC = "5e:2b:71:0b:25:10"


def vf_nic(mac: str | None = VF_MAC) -> PassthroughNic:
    return PassthroughNic(
        name="nic1",
        binding=BindingKind.SRIOV,
        network="nic1",
        mapping=InterfaceMapping("nic1", "nic1", "ns/sriov", None, MappingRule.NETWORK_STATUS),
        device=VfioDevice(id="hostdev1", sysfs_path="/sys/bus/pci/devices/0000:3b:02.2"),
        device_source="network-status device-info",
        mac=mac,
        ips=(ipaddress.ip_interface("192.168.77.21/24"), ipaddress.ip_interface("fd00:77::21/64")),
        gateways=(ipaddress.ip_address("192.168.77.1"),),
        nameservers=(ipaddress.ip_address("192.168.77.1"),),
        search=("lab.example",),
        mtu=9000,
    )


def masquerade_plus_vf() -> NetworkPlan:
    spec = load(EXAMPLES / "kubevirt-linux-bridge-secondary.yaml")
    spec = replace(spec, interfaces=spec.interfaces[:1], networks=spec.networks[:1])
    p = plan(spec, pod_state(pod_link(v6=None, gw6=None)))
    return replace(p, passthrough=(vf_nic(),))


def read_iso(path: Path) -> tuple[str, dict[str, bytes], dict[str, bytes]]:
    """(volume label, files by Rock Ridge name, files by Joliet name)."""
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        label = iso.pvd.volume_identifier.decode().strip()
        rr: dict[str, bytes] = {}
        joliet: dict[str, bytes] = {}
        for child in iso.list_children(rr_path="/"):
            if child.is_dot() or child.is_dotdot():
                continue
            name = child.rock_ridge.name().decode()
            buf = io.BytesIO()
            iso.get_file_from_iso_fp(buf, rr_path=f"/{name}")
            rr[name] = buf.getvalue()
        for child in iso.list_children(joliet_path="/"):
            if child.is_dot() or child.is_dotdot():
                continue
            name = child.file_identifier().decode("utf-16-be")
            buf = io.BytesIO()
            iso.get_file_from_iso_fp(buf, joliet_path=f"/{name}")
            joliet[name] = buf.getvalue()
        return label, rr, joliet
    finally:
        iso.close()


def test_generated_network_config_matches_by_mac() -> None:
    doc = generated_network_config(masquerade_plus_vf())
    assert doc is not None
    eth = doc["ethernets"]
    assert doc["version"] == 2 and list(eth) == ["default", "nic1"]
    assert eth["default"] == {
        "match": {"macaddress": masquerade_plus_vf().nics[0].device.mac},
        "dhcp4": True,
        # systemd-networkd applies the lease's search list only when told to
        "dhcp4-overrides": {"use-domains": True},
        "dhcp6": False,
    }
    assert eth["nic1"] == {
        "match": {"macaddress": VF_MAC},
        "addresses": ["192.168.77.21/24", "fd00:77::21/64"],
        "routes": [{"to": "default", "via": "192.168.77.1"}],
        "nameservers": {"addresses": ["192.168.77.1"], "search": ["lab.example"]},
        "mtu": 9000,
    }


def test_dhcp_entries_use_the_search_list_only_when_there_is_one() -> None:
    spec = load(EXAMPLES / "kubevirt-linux-bridge-secondary.yaml")
    spec = replace(spec, interfaces=spec.interfaces[:1], networks=spec.networks[:1])
    link = pod_link(v6=None, gw6=None)
    pod = replace(pod_state(link), resolv=replace(pod_state().resolv, search=()))
    doc = generated_network_config(replace(plan(spec, pod), passthrough=(vf_nic(),)))
    assert doc is not None
    assert doc["ethernets"]["default"] == {
        "match": {"macaddress": plan(spec, pod).nics[0].device.mac},
        "dhcp4": True,
        "dhcp6": False,
    }
    with_search = generated_network_config(
        replace(plan(spec, pod_state(link)), passthrough=(vf_nic(),))
    )
    assert with_search is not None
    assert with_search["ethernets"]["default"]["dhcp4-overrides"] == {"use-domains": True}


def test_no_static_nic_no_network_config() -> None:
    p = replace(masquerade_plus_vf(), passthrough=())
    assert generated_network_config(p) is None
    assert merge_network_config(p, None) is None
    # a VF whose MAC or addresses the CNI did not report cannot be described
    assert generated_network_config(replace(p, passthrough=(vf_nic(mac=None),))) is None


def test_user_v2_merged_user_wins() -> None:
    spec = load(EXAMPLES / "kubevirt-cloud-init-ip.yaml")
    user = next(v.source for v in spec.volumes if isinstance(v.source, CloudInitNoCloud))
    assert user.network_data is not None
    merged = yaml.safe_load(merge_network_config(masquerade_plus_vf(), user.network_data) or "")
    assert list(merged["ethernets"]) == ["eth1", "nic1"]  # no DHCP entries added to the user's
    assert merged["ethernets"]["eth1"] == {"addresses": ["10.10.10.14/24"]}
    assert merged["ethernets"]["nic1"]["addresses"][0] == "192.168.77.21/24"
    same_mac = (
        "version: 2\nethernets:\n  mine:\n"
        f"    match: {{macaddress: '{VF_MAC.upper()}'}}\n    dhcp4: true\n"
    )
    merged = yaml.safe_load(merge_network_config(masquerade_plus_vf(), same_mac) or "")
    assert list(merged["ethernets"]) == ["mine"]
    wrapped = "network:\n  version: 2\n  ethernets:\n    eth9: {dhcp4: true}\n"
    merged = yaml.safe_load(merge_network_config(masquerade_plus_vf(), wrapped) or "")
    assert list(merged["network"]["ethernets"]) == ["eth9", "nic1"]


def test_user_v1_kept_verbatim_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    v1 = "version: 1\nconfig:\n  - type: physical\n    name: eth0\n    subnets: [{type: dhcp}]\n"
    with caplog.at_level(logging.WARNING):
        assert merge_network_config(masquerade_plus_vf(), v1) == v1
    assert "not netplan version 2" in caplog.text and "nic1" in caplog.text


@pytest.mark.parametrize("bad", ["version: [", "- just\n- a list\n"])
def test_bad_user_network_data_is_a_spec_error(bad: str) -> None:
    with pytest.raises(SpecError, match=r"volumes\[ci\]\.networkData"):
        merge_network_config(masquerade_plus_vf(), bad, "ci")


def test_seed_content_meta_data() -> None:
    spec = load(EXAMPLES / "kubevirt-sriov.yaml")
    vol = next(v for v in spec.volumes if v.name == "cloudinitdisk")
    content = seed_content(spec, vol, None)
    assert content.user_data.startswith("#cloud-config\npassword: fedora")
    assert yaml.safe_load(content.meta_data) == {
        "instance-id": "example-vm.default",
        "local-hostname": "example-vm",
    }
    content = seed_content(replace(spec, uid="6a0b-11ee", hostname="db1"), vol, None)
    assert yaml.safe_load(content.meta_data) == {
        "instance-id": "6a0b-11ee",
        "local-hostname": "db1",
    }
    assert content.network_config is None


def test_iso_read_back(tmp_path: Path) -> None:
    content = SeedContent(
        user_data="#cloud-config\nssh_pwauth: true\n",
        meta_data="instance-id: abc\nlocal-hostname: vm\n",
        network_config="version: 2\nethernets: {}\n",
    )
    path = tmp_path / "seed" / "cloudinitdisk.iso"
    build_iso(content, path)
    label, rr, joliet = read_iso(path)
    assert label == "cidata"
    assert rr == joliet == content.files()
    assert set(rr) == {"user-data", "meta-data", "network-config"}
    assert path.stat().st_mode & 0o777 == 0o644
    assert not list(path.parent.glob(".*.tmp"))
    # util-linux reads the same label (what cloud-init's ds-identify looks for)
    blkid = subprocess.run(
        ["blkid", "-p", "-o", "export", str(path)],
        check=True,
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert "LABEL=cidata" in blkid.stdout and "TYPE=iso9660" in blkid.stdout


def test_iso_without_network_config(tmp_path: Path) -> None:
    build_iso(SeedContent(user_data="", meta_data="instance-id: x\n"), tmp_path / "s.iso")
    _, rr, _ = read_iso(tmp_path / "s.iso")
    assert rr == {"user-data": b"", "meta-data": b"instance-id: x\n"}


def test_build_seeds_for_resolved_volumes(tmp_path: Path) -> None:
    spec = load(EXAMPLES / "virtink-sriov.yaml")
    volumes = resolve(spec, VolumeLayout(tmp_path / "volumes", tmp_path / "scratch"))
    seed = next(d for d in volumes.disks if d.name == "cloud-init")
    assert seed.file.state is FileState.BUILD
    p = NetworkPlan(nics=(), passthrough=(vf_nic(),))
    built = build_seeds(spec, p, volumes)
    file = next(d for d in built.disks if d.name == "cloud-init").file
    assert file.state is FileState.PRESENT and file.path == seed.file.path
    _, rr, _ = read_iso(Path(file.path))
    assert b"ssh_pwauth: True" in rr["user-data"]
    net = yaml.safe_load(rr["network-config"])
    assert net["ethernets"]["nic1"]["match"]["macaddress"] == VF_MAC
    # other disks untouched
    others = [d.file.state for d in built.disks if d.name != "cloud-init"]
    assert others == [d.file.state for d in volumes.disks if d.name != "cloud-init"]


def test_not_a_cloud_init_volume() -> None:
    spec = load(EXAMPLES / "kubevirt-sriov.yaml")
    with pytest.raises(VolumeError, match=r"not a cloud-init NoCloud volume"):
        seed_content(spec, Volume("x", spec.volumes[0].source), None)


def test_plain_l2_bridge_with_addresses_in_network_status() -> None:
    spec = load(EXAMPLES / "virtink-multus-ovs-bridge.yaml")
    l2 = pod_link("net0", v4=None, v6=None, gw4=None, gw6=None, mac="02:00:00:00:00:10")
    status = parse_network_status(
        '[{"name": "default/ovs-br1", "interface": "net0", "ips": ["10.66.0.7"],'
        ' "mac": "02:00:00:00:00:10"}]'
    )
    p = plan(spec, pod_state(pod_link(), l2), PlanOptions(podinfo=PodInfo(network_status=status)))
    assert p.nics[0].dhcp4 is None
    doc = generated_network_config(p)
    assert doc == {
        "version": 2,
        "ethernets": {
            "ovs": {"match": {"macaddress": "02:00:00:00:00:10"}, "addresses": ["10.66.0.7/24"]}
        },
    }
    # without the network-status addresses nothing needs describing
    assert generated_network_config(plan(spec, pod_state(pod_link(), l2))) is None

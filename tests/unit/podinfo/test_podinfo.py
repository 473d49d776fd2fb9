"""launcher.podinfo: the downward API annotations file, network-status and device-plugin env."""

from __future__ import annotations

import ipaddress
import json
import shutil
from pathlib import Path

import pytest

from launcher.errors import PodInfoError
from launcher.podinfo import (
    NETWORK_STATUS_ANNOTATION,
    go_unquote,
    load_podinfo,
    parse_annotations,
    parse_network_status,
    pci_devices_from_env,
    resource_env_name,
)

DATA = Path(__file__).resolve().parents[2] / "data" / "network-status"
FIXTURES = sorted(p.name for p in DATA.glob("*.json"))


def test_annotations_file_as_kubelet_writes_it(tmp_path: Path) -> None:
    shutil.copy(DATA / "annotations", tmp_path / "annotations")
    info = load_podinfo(tmp_path, environ={})
    ann = dict(info.annotations)
    assert ann["note.example/tabbed"] == "a\tb \u00e9 \\ end"
    assert ann["kubernetes.io/config.source"] == "api"
    assert json.loads(ann[NETWORK_STATUS_ANNOTATION]) == json.loads(
        (DATA / "sriov-cni.json").read_text()
    )
    assert info.source is not None and str(tmp_path / "annotations") in info.source
    assert info.network_status is not None
    calico, vf = info.network_status
    assert (calico.name, calico.interface, calico.default) == ("k8s-pod-network", None, True)
    assert vf.name == "default/sriov-network" and vf.interface == "podbaffdcb099b"
    assert vf.mac == "5e:2b:71:0b:25:10"
    assert vf.ips == (ipaddress.ip_interface("192.168.77.21/32"),)
    assert vf.dns.nameservers == (ipaddress.ip_address("192.168.77.1"),)
    assert vf.dns.search == ("lab.example",)
    assert vf.device_info is not None
    assert (vf.device_info.type, vf.device_info.pci_address) == ("pci", "0000:3b:02.2")
    assert vf.device_info.pf_pci_address == "0000:3b:00.0"


@pytest.mark.parametrize("name", FIXTURES)
def test_every_fixture_parses(name: str) -> None:
    raw = json.loads((DATA / name).read_text())
    status = parse_network_status((DATA / name).read_text())
    assert [s.name for s in status] == [r["name"] for r in raw]
    assert [s.interface for s in status] == [r.get("interface") for r in raw]
    assert [s.default for s in status] == [r.get("default", False) for r in raw]


def test_ovn_k_prefix_and_mtu_kept() -> None:
    status = parse_network_status((DATA / "ovn-k.json").read_text())
    assert status[0].ips == (
        ipaddress.ip_interface("10.244.2.7/32"),
        ipaddress.ip_interface("fd00:10:244:3::7/128"),
    )
    assert status[1].ips == (ipaddress.ip_interface("10.100.200.8/24"),)
    assert status[1].mtu == 1300


def test_vdpa_device_info() -> None:
    status = parse_network_status((DATA / "vdpa.json").read_text())
    info = status[1].device_info
    assert info is not None
    assert (info.type, info.vdpa_path, info.vdpa_driver) == ("vdpa", "/dev/vhost-vdpa-1", "vhost")
    assert info.pci_address == "0000:65:00.2"


@pytest.mark.parametrize(
    ("quoted", "plain"),
    [
        ('""', ""),
        ('"plain"', "plain"),
        (r'"q\"uote\\back"', 'q"uote\\back'),
        (r'"\a\b\f\n\r\t\v"', "\a\b\f\n\r\t\v"),
        (r'"\x41\u00e9\U0001f600\101"', "A\u00e9\U0001f600A"),
        ('"raw \u00e9 utf-8"', "raw \u00e9 utf-8"),
        (r'"\xc3\xa9"', "\u00e9"),  # Go writes invalid-UTF-8 bytes as \x; valid pairs decode
    ],
)
def test_go_unquote(quoted: str, plain: str) -> None:
    assert go_unquote(quoted) == plain


@pytest.mark.parametrize("bad", ["plain", '"open', r'"bad\q"', '"in"side"', '"'])
def test_go_unquote_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        go_unquote(bad)


def test_malformed_annotation_line_named() -> None:
    with pytest.raises(PodInfoError, match=r"annotations line 2 is not key=\"value\""):
        parse_annotations('a="1"\nno equals sign\n')
    with pytest.raises(PodInfoError, match=r"annotations line 1 \(a\) has a badly quoted value"):
        parse_annotations("a=unquoted\n")


def test_env_network_status_as_virtink_passes_it(tmp_path: Path) -> None:
    text = (DATA / "vdpa.json").read_text()
    info = load_podinfo(tmp_path / "absent", environ={"NETWORK_STATUS": text})
    assert info.source == "environment variable NETWORK_STATUS"
    assert info.network_status is not None and len(info.network_status) == 3


def test_file_wins_over_env(tmp_path: Path) -> None:
    shutil.copy(DATA / "annotations", tmp_path / "annotations")
    env = {"NETWORK_STATUS": (DATA / "vdpa.json").read_text()}
    info = load_podinfo(tmp_path, environ=env)
    assert info.network_status is not None
    assert info.network_status[1].name == "default/sriov-network"


def test_nothing_there_is_not_an_error(tmp_path: Path) -> None:
    info = load_podinfo(tmp_path, environ={})
    assert info.network_status is None and info.source is None
    assert load_podinfo(None, environ={}).network_status is None


def test_empty_list_is_not_absent() -> None:
    assert parse_network_status("[]") == ()


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ("{", r"is not valid JSON"),
        ('{"name": "x"}', r"is not a JSON list but dict"),
        ('[{"interface": "net1"}]', r"\[0\]\.name None is not a network name"),
        ('[{"name": "ns/a", "mac": "zz"}]', r"network 'ns/a': mac 'zz' is not a MAC address"),
        ('[{"name": "ns/a", "ips": ["10.0.0.300"]}]', r"network 'ns/a': ips '10.0.0.300' is not"),
        ('[{"name": "ns/a", "ips": "10.0.0.3"}]', r"network 'ns/a': ips '10.0.0.3' is not a list"),
        ('[{"name": "ns/a", "mtu": 20}]', r"network 'ns/a': mtu 20 is not a valid MTU"),
        ('[{"name": "ns/a", "default": "yes"}]', r"network 'ns/a': default 'yes' is not true"),
        (
            '[{"name": "ns/a", "device-info": {"type": "pci", "pci": {"pci-address": "3b:2"}}}]',
            r"network 'ns/a': device-info.pci.pci-address '3b:2' is not a PCI address",
        ),
        ('[{"name": "ns/a", "device-info": {"pci": {}}}]', r"device-info.type None is not"),
    ],
)
def test_malformed_network_status_names_the_network(doc: str, message: str) -> None:
    with pytest.raises(PodInfoError, match=message):
        parse_network_status(doc)


def test_short_pci_address_gets_domain() -> None:
    doc = '[{"name": "ns/a", "device-info": {"type": "pci", "pci": {"pci-address": "3B:02.1"}}}]'
    info = parse_network_status(doc)[0].device_info
    assert info is not None and info.pci_address == "0000:3b:02.1"


def test_device_plugin_env() -> None:
    env = {
        "PCIDEVICE_INTEL_COM_SRIOV_NETDEVICE": "0000:3b:02.2,0000:3b:02.3",
        "PCIDEVICE_INTEL_COM_SRIOV_NETDEVICE_INFO": '{"0000:3b:02.2": {}}',
        "PCIDEVICE_OPENSHIFT_IO_MLX": "65:00.2",
        "KUBEVIRT_RESOURCE_NAME_nic1": "intel.com/sriov_netdevice",
        "HOME": "/root",
    }
    devices, resources = pci_devices_from_env(env)
    assert dict(devices) == {
        "INTEL_COM_SRIOV_NETDEVICE": ("0000:3b:02.2", "0000:3b:02.3"),
        "OPENSHIFT_IO_MLX": ("0000:65:00.2",),
    }
    assert resources == (("nic1", "intel.com/sriov_netdevice"),)
    info = load_podinfo(None, environ=env)
    assert info.resource_for("nic1") == "intel.com/sriov_netdevice"
    assert info.pci_addresses("intel.com/sriov_netdevice") == ("0000:3b:02.2", "0000:3b:02.3")
    assert info.pci_addresses("openshift.io/mlx") == ("0000:65:00.2",)
    assert info.pci_addresses("example.com/none") == ()


def test_resource_env_name() -> None:
    assert resource_env_name("intel.com/sriov_netdevice") == "INTEL_COM_SRIOV_NETDEVICE"
    assert resource_env_name("openshift.io/mlx-25g") == "OPENSHIFT_IO_MLX_25G"
    assert resource_env_name("PCIDEVICE_A_B") == "A_B"


def test_bad_device_plugin_address_names_the_variable() -> None:
    with pytest.raises(PodInfoError, match=r"environment variable PCIDEVICE_X address 'nope'"):
        pci_devices_from_env({"PCIDEVICE_X": "nope"})


def test_old_networks_status_annotation(tmp_path: Path) -> None:
    text = (DATA / "multus-bridge.json").read_text()
    (tmp_path / "annotations").write_text(
        "k8s.v1.cni.cncf.io/networks-status=" + json.dumps(text) + "\n"
    )
    info = load_podinfo(tmp_path, environ={})
    assert info.source is not None and info.source.endswith("networks-status")
    assert info.network_status is not None
    assert info.network_status[1].name == "default/a-bridge-network"

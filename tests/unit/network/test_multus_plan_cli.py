"""``virt-launcher plan`` for the secondary-network examples with fixture podinfo.

Each example is planned ``--offline`` with a podinfo dir (or ``NETWORK_STATUS`` / device
plugin env) from tests/data/network-status and ``--host-root`` pointing at a fake sysfs
tree: the JSON must show the interface mapping rule, the VFIO/vDPA devices and the
hypervisor arguments built from them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from launcher.cli import main

from .fake_sysfs import FakeHost

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "examples"
DATA = ROOT / "tests" / "data" / "network-status"


@pytest.fixture
def host(tmp_path: Path) -> FakeHost:
    h = FakeHost(tmp_path / "host")
    h.add_pf()
    h.add_vf("0000:3b:02.2")
    h.add_vf("0000:3b:02.3", group="43")
    h.add_vdpa(1)
    h.add_vdpa(2)
    return h


def podinfo_dir(tmp_path: Path, status: str | None) -> Path:
    d = tmp_path / "podinfo"
    d.mkdir(exist_ok=True)
    if status == "annotations":
        shutil.copy(DATA / "annotations", d / "annotations")
    elif status is not None:
        text = (DATA / status).read_text()
        (d / "annotations").write_text(
            "k8s.v1.cni.cncf.io/network-status=" + json.dumps(text) + "\n"
        )
    return d


def plan_json(
    capsys: pytest.CaptureFixture[str],
    example: str,
    host: FakeHost,
    podinfo: Path,
    allowed: tuple[str, ...] = ("volumes",),
) -> dict[str, Any]:
    main(
        [
            "plan",
            "--offline",
            "--spec",
            str(EXAMPLES / example),
            "--podinfo",
            str(podinfo),
            "--host-root",
            str(host.root),
            "--volumes-dir",
            str(host.root / "volumes"),
            "--log-level",
            "error",
        ]
    )
    doc: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert [p for p in doc["problems"] if p["stage"] not in allowed] == []
    return doc


def rules(doc: dict[str, Any]) -> list[tuple[str, str | None, str]]:
    return [(m["interface"], m["pod_interface"], m["rule"]) for m in doc["network"]["interfaces"]]


def test_kubevirt_sriov(capsys: pytest.CaptureFixture[str], host: FakeHost, tmp_path: Path) -> None:
    doc = plan_json(capsys, "kubevirt-sriov.yaml", host, podinfo_dir(tmp_path, "annotations"))
    assert rules(doc) == [("nic1", "podbaffdcb099b", "network-status")]
    machine = doc["hypervisor"]["machine"]
    assert machine["nets"] == [] and machine["vdpa"] == []
    assert machine["vfio"] == [
        {
            "id": "hostdev0",
            "sysfs_path": f"{host.root}/sys/bus/pci/devices/0000:3b:02.2",
            "guest_pci_address": None,
        }
    ]
    assert "vfio-pci,id=hostdev0,host=0000:3b:02.2,bus=rp-hostdev0" in doc["hypervisor"]["argv"]
    net = yaml.safe_load(doc["cloud_init"]["cloudinitdisk"]["network_config"])
    assert net["ethernets"]["nic1"]["match"] == {"macaddress": "5e:2b:71:0b:25:10"}
    assert net["ethernets"]["nic1"]["addresses"] == ["192.168.77.21/24"]


def test_kubevirt_dpdk_from_device_plugin_env(
    capsys: pytest.CaptureFixture[str],
    host: FakeHost,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NETWORK_STATUS", raising=False)
    monkeypatch.setenv("PCIDEVICE_INTEL_COM_DPDK", "0000:3b:02.3")
    monkeypatch.setenv("KUBEVIRT_RESOURCE_NAME_nic-east", "intel.com/dpdk")
    doc = plan_json(capsys, "kubevirt-dpdk.yaml", host, podinfo_dir(tmp_path, None))
    assert rules(doc) == [
        ("default", "eth0", "pod-network"),
        ("nic-east", "podbed46c69ce0", "kubevirt-hashed"),
    ]
    pt = doc["network"]["passthrough"][0]
    vf = pt["device"]
    assert (vf["sysfs_path"][-12:], vf["guest_pci_address"]) == ("0000:3b:02.3", "0000:07:00.0")
    assert pt["device_source"] == "environment variable PCIDEVICE_INTEL_COM_DPDK"
    # KubeVirt's 0000:07:00.0 is honoured on QEMU: the VF sits at slot 0 of its own root
    # port, and that port is the 7th in slot order, so the firmware numbers its bus 07.
    argv = doc["hypervisor"]["argv"]
    assert "vfio-pci,id=hostdev1,host=0000:3b:02.3,bus=rp-hostdev1,addr=0x00.0x0" in argv
    ports = [a.split(",")[1] for a in argv if a.startswith("pcie-root-port,")]
    assert ports.index("id=rp-hostdev1") == 7 - 1
    assert len(ports) == len(set(ports))


def test_virtink_vdpa_from_env_on_cloud_hypervisor(
    capsys: pytest.CaptureFixture[str],
    host: FakeHost,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NETWORK_STATUS", (DATA / "vdpa.json").read_text())
    doc = plan_json(capsys, "virtink-vdpa.yaml", host, podinfo_dir(tmp_path, None))
    assert doc["hypervisor"]["kind"] == "cloud-hypervisor"
    assert rules(doc) == [
        ("pod", "eth0", "pod-network"),
        ("vdpa1", "net1", "network-status"),
        ("vdpa2", "net2", "network-status"),
    ]
    vdpa = doc["hypervisor"]["machine"]["vdpa"]
    assert [(d["id"], d["path"], d["num_queues"], d["iommu"]) for d in vdpa] == [
        ("vdpa1", f"{host.root}/dev/vhost-vdpa-1", 9, False),
        ("vdpa2", f"{host.root}/dev/vhost-vdpa-2", 9, False),
    ]
    body = json.dumps(doc["hypervisor"])
    assert f'"path": "{host.root}/dev/vhost-vdpa-2", "num_queues": 9' in body


@pytest.mark.parametrize(
    "case",
    [
        ("virtink-multus-ovs-bridge.yaml", None, [("ovs", "net0", "virtink-ordinal")]),
        (
            "kubevirt-linux-bridge-secondary.yaml",
            "multus-bridge.json",
            [
                ("default", "eth0", "pod-network"),
                ("bridge-net", "pod03b731d2111", "network-status"),
            ],
        ),
        (
            "kubevirt-ovn-secondary.yaml",
            "ovn-k.json",
            [("secondary", "podc0f69e19ba2", "network-status")],
        ),
        (
            "kubevirt-cloud-init-ip.yaml",
            None,
            [
                ("default", "eth0", "pod-network"),
                ("secondary", "podc0f69e19ba2", "kubevirt-hashed"),
            ],
        ),
    ],
)
def test_secondary_bridge_examples(
    capsys: pytest.CaptureFixture[str],
    host: FakeHost,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    case: tuple[str, str | None, list[tuple[str, str, str]]],
) -> None:
    example, status, expected = case
    monkeypatch.delenv("NETWORK_STATUS", raising=False)
    doc = plan_json(capsys, example, host, podinfo_dir(tmp_path, status))
    assert rules(doc) == expected
    taps = [n["tap"] for n in doc["hypervisor"]["machine"]["nets"]]
    assert len(taps) == len(expected) and doc["hypervisor"]["machine"]["vfio"] == []


def test_sriov_failure_is_a_plan_problem(
    capsys: pytest.CaptureFixture[str], host: FakeHost, tmp_path: Path
) -> None:
    host.bind("0000:3b:02.2", "iavf")
    main(
        [
            "plan",
            "--offline",
            "--spec",
            str(EXAMPLES / "kubevirt-sriov.yaml"),
            "--podinfo",
            str(podinfo_dir(tmp_path, "annotations")),
            "--host-root",
            str(host.root),
            "--log-level",
            "error",
        ]
    )
    doc = json.loads(capsys.readouterr().out)
    assert doc["network"] is None and doc["hypervisor"] is None
    (problem,) = [p for p in doc["problems"] if p["stage"] == "network"]
    assert problem["exit_code"] == 3
    assert "0000:3b:02.2 is bound to iavf, not vfio-pci" in problem["message"]


def test_virtink_sriov_from_device_plugin_on_cloud_hypervisor(
    capsys: pytest.CaptureFixture[str],
    host: FakeHost,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NETWORK_STATUS", raising=False)
    monkeypatch.setenv("PCIDEVICE_MELLANOX_COM_SRIOV_25G", "0000:3b:02.2")
    doc = plan_json(capsys, "virtink-sriov.yaml", host, podinfo_dir(tmp_path, None))
    assert rules(doc) == [("sriov", "net0", "virtink-ordinal")]
    hv = doc["hypervisor"]
    assert hv["kind"] == "cloud-hypervisor"
    assert hv["vm_config"]["devices"] == [
        {"id": "hostdev0", "path": f"{host.root}/sys/bus/pci/devices/0000:3b:02.2"}
    ]
    assert hv["add_net"] == []
    # the seed ISO is attached read-only at its planned path
    assert hv["vm_config"]["disks"][1]["path"].endswith("/cloud-init/cloud-init.iso")

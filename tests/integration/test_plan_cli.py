"""`virt-launcher plan` against a real pod netns (dm-*), real files and a real loop device.

The pod netns ``dm-pod`` is wired by a veth to ``dm-peer`` the way a CNI leaves it (eth0
with an IPv4 /24 and an IPv6 /64, default routes via the peer, a per-netns resolv.conf).
Checks: the plan reads that pod (MAC, addresses, gateway, DNS) both with ``--pod-netns``
and from inside the netns; kernel/initrd/disk paths resolve under ``--volumes-dir`` with
formats detected, a block-mode PVC on a loop device included; the QEMU argv is complete;
a missing file or pod interface is a listed problem with its exit code while the rest is
still printed; and plan changes nothing in the netns.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from launcher.volumes import QCOW2_MAGIC

POD = "dm-pod"
PEER = "dm-peer"
POD_MAC = "0a:58:0a:f4:01:05"
REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 30


def sh(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    assert done.returncode == 0, f"{' '.join(argv)}: {done.stderr.strip()}"
    return done.stdout


@pytest.fixture
def pod() -> Iterator[str]:
    """dm-pod (eth0 10.244.1.5/24, fd00:10:244:1::5/64) ↔ dm-peer, removed afterwards."""
    for ns in (POD, PEER):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10, check=False)
    etc = Path("/etc/netns") / POD
    try:
        sh("ip", "netns", "add", POD)
        sh("ip", "netns", "add", PEER)
        sh("ip", "-n", PEER, "link", "add", "eth0", "type", "veth", "peer", "dmp0")
        sh("ip", "-n", PEER, "link", "set", "dmp0", "netns", POD)
        sh("ip", "-n", POD, "link", "set", "dmp0", "name", "eth0")
        sh("ip", "-n", POD, "link", "set", "eth0", "address", POD_MAC, "mtu", "1400")
        sh("ip", "-n", POD, "addr", "add", "10.244.1.5/24", "dev", "eth0")
        sh("ip", "-n", POD, "addr", "add", "fd00:10:244:1::5/64", "dev", "eth0", "nodad")
        sh("ip", "-n", PEER, "addr", "add", "10.244.1.1/24", "dev", "eth0")
        sh("ip", "-n", PEER, "addr", "add", "fd00:10:244:1::1/64", "dev", "eth0", "nodad")
        for ns in (POD, PEER):
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", POD, "route", "add", "default", "via", "10.244.1.1")
        sh("ip", "-n", POD, "-6", "route", "add", "default", "via", "fd00:10:244:1::1")
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text("nameserver 10.96.0.10\nsearch dm.svc.cluster.local\n")
        yield POD
    finally:
        for ns in (POD, PEER):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10, check=False)
        (etc / "resolv.conf").unlink(missing_ok=True)
        if etc.is_dir():
            etc.rmdir()


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[str]:
    """A real block device (loop) whose content starts with the qcow2 magic."""
    backing = tmp_path / "block.img"
    backing.write_bytes(QCOW2_MAGIC + b"\0" * ((1 << 20) - len(QCOW2_MAGIC)))
    dev = sh("losetup", "--find", "--show", str(backing)).strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], capture_output=True, timeout=10, check=False)


def spec_file(tmp_path: Path, with_pvc: bool = True) -> Path:
    volumes: list[dict[str, Any]] = [
        {"name": "root", "containerDisk": {"image": "example/root:1"}},
    ]
    disks: list[dict[str, Any]] = [{"name": "root", "disk": {"bus": "virtio"}}]
    if with_pvc:
        volumes.append({"name": "data", "persistentVolumeClaim": {"claimName": "data-claim"}})
        disks.append({"name": "data", "disk": {"bus": "virtio"}})
    doc = {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstance",
        "metadata": {"name": "dm-vm", "namespace": "dm"},
        "spec": {
            "domain": {
                "cpu": {"cores": 1},
                "memory": {"guest": "256Mi"},
                "firmware": {
                    "kernelBoot": {
                        "container": {
                            "image": "example/kernel:1",
                            "kernelPath": "/boot/vmlinuz",
                            "initrdPath": "/boot/initrd.img",
                        },
                        "kernelArgs": "console=ttyS0",
                    }
                },
                "devices": {
                    "interfaces": [{"name": "pod", "bridge": {}}],
                    "disks": disks,
                },
            },
            "networks": [{"name": "pod", "pod": {}}],
            "volumes": volumes,
        },
    }
    path = tmp_path / "vm.json"
    path.write_text(json.dumps(doc))
    return path


def volumes_dir(tmp_path: Path, block: str | None) -> Path:
    root = tmp_path / "volumes"
    for rel, data in [
        ("kernel/boot/vmlinuz", b"MZ kernel"),
        ("kernel/boot/initrd.img", b"\x1f\x8b initrd"),
        ("root/disk.img", b"\0" * 4096),
    ]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    if block is not None:
        os.symlink(block, root / "data")  # block mode: the volume path is the device
    return root


def plan(*args: str, netns: str | None = None) -> tuple[int, dict[str, Any], str]:
    argv = [sys.executable, "-m", "launcher", "plan", *args]
    if netns is not None:
        argv = ["ip", "netns", "exec", netns, *argv]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=TIMEOUT_S, check=False, cwd=REPO
    )
    doc = json.loads(done.stdout) if done.stdout else {}
    return done.returncode, doc, done.stderr


def netns_view(netns: str) -> tuple[object, ...]:
    """Links (name, MAC, MTU, master, addresses) and routes; DAD and lifetimes left out."""
    links = [
        (
            link["ifname"],
            link.get("address"),
            link["mtu"],
            link.get("master"),
            sorted(f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", [])),
        )
        for link in json.loads(sh("ip", "-n", netns, "-j", "addr"))
    ]
    routes = json.loads(sh("ip", "-n", netns, "-j", "route"))
    routes6 = json.loads(sh("ip", "-n", netns, "-j", "-6", "route"))
    return (links, routes, routes6)


def test_plan_reads_the_pod_and_resolves_every_file(
    pod: str, loop_device: str, tmp_path: Path
) -> None:
    spec = spec_file(tmp_path)
    vols = volumes_dir(tmp_path, loop_device)
    state = tmp_path / "state"
    before = netns_view(pod)
    nft_before = sh("ip", "netns", "exec", pod, "nft", "list", "ruleset")
    code, doc, err = plan(
        "--spec", str(spec), "--pod-netns", pod, "--volumes-dir", str(vols),
        "--state-dir", str(state), "--accel", "tcg",
    )  # fmt: skip
    assert code == 0, err
    assert doc["problems"] == []
    nic = doc["network"]["nics"][0]
    assert doc["network"]["pod"] == pod
    assert nic["original"]["mac"] == POD_MAC and nic["original"]["mtu"] == 1400
    assert nic["dhcp4"]["leases"][0]["address"] == "10.244.1.5/24"
    assert nic["dhcp4"]["router"] == "10.244.1.1"
    assert nic["dhcp4"]["dns"] == ["10.96.0.10"]  # from /etc/netns/dm-pod/resolv.conf
    assert nic["dhcp6"]["leases"][0]["address"] == "fd00:10:244:1::5/64"

    volumes = doc["volumes"]
    assert volumes["kernel"]["path"] == str(vols / "kernel/boot/vmlinuz")
    assert volumes["initrd"]["path"] == str(vols / "kernel/boot/initrd.img")
    root, data = volumes["disks"]
    # the writable containerDisk: an overlay in the state dir, the image only read
    overlay = str(state / "overlay/root.qcow2")
    assert (root["file"]["path"], root["file"]["format"], root["file"]["state"]) == (
        overlay,
        "qcow2",
        "create",
    )
    image = root["file"]["backing"]
    assert (image["path"], image["format"], image["block"], image["state"]) == (
        str(vols / "root/disk.img"),
        "raw",
        False,
        "present",
    )
    assert (data["file"]["path"], data["file"]["format"], data["file"]["block"]) == (
        str(vols / "data"),
        "qcow2",
        True,
    )
    assert data["file"]["size_bytes"] == 1 << 20  # the device size, not the symlink's

    hv = doc["hypervisor"]
    assert hv["kind"] == "qemu" and hv["accel"] == {"mode": "tcg", "shown": "tcg"}
    argv = hv["argv"]
    assert argv[argv.index("-kernel") + 1] == str(vols / "kernel/boot/vmlinuz")
    assert argv[argv.index("-initrd") + 1] == str(vols / "kernel/boot/initrd.img")
    assert argv[argv.index("-append") + 1] == "console=ttyS0"
    assert any(f"mac={POD_MAC}" in a and "host_mtu=1400" in a for a in argv)
    blockdevs = [json.loads(argv[i + 1]) for i, a in enumerate(argv) if a == "-blockdev"]
    assert [(b["driver"], b["file"]["filename"]) for b in blockdevs] == [
        ("qcow2", overlay),
        ("qcow2", str(vols / "data")),
    ]
    assert blockdevs[0]["backing"] == {
        "driver": "raw",
        "read-only": True,
        "file": {"driver": "file", "filename": str(vols / "root/disk.img"), "read-only": True},
    }

    # plan only reads: the netns and the state dir are as they were
    assert netns_view(pod) == before
    assert sh("ip", "netns", "exec", pod, "nft", "list", "ruleset") == nft_before
    assert not state.exists()

    # the same plan from inside the pod netns (as in a real pod: no --pod-netns)
    code, inside, err = plan(
        "--spec", str(spec), "--volumes-dir", str(vols), "--state-dir", str(state),
        "--accel", "tcg", netns=pod,
    )  # fmt: skip
    assert code == 0, err
    assert inside["network"]["pod"] == "current netns"
    assert inside["network"]["nics"] == doc["network"]["nics"]
    assert inside["hypervisor"] == hv


def test_missing_file_is_a_problem_and_the_rest_is_printed(pod: str, tmp_path: Path) -> None:
    spec = spec_file(tmp_path, with_pvc=False)
    vols = volumes_dir(tmp_path, None)
    (vols / "root/disk.img").unlink()
    code, doc, err = plan("--spec", str(spec), "--pod-netns", pod, "--volumes-dir", str(vols))
    assert code == 2
    missing = str(vols / "root/disk.img")
    assert doc["problems"] == [
        {
            "stage": "volumes",
            "message": f"containerDisk 'root': no file at {missing}",
            "exit_code": 2,
        }
    ]
    assert f"no file at {missing}" in err  # also said on stderr
    assert doc["volumes"]["disks"][0]["file"]["backing"]["state"] == "missing"  # the image
    assert doc["network"]["nics"][0]["dhcp4"]["leases"][0]["address"] == "10.244.1.5/24"
    assert doc["hypervisor"]["kind"] == "qemu"  # still shown, with the looked-at path


def test_missing_pod_interface_is_a_network_problem(tmp_path: Path) -> None:
    spec = spec_file(tmp_path, with_pvc=False)
    vols = volumes_dir(tmp_path, None)
    empty = f"dm-e{uuid.uuid4().hex[:6]}"
    sh("ip", "netns", "add", empty)
    try:
        code, doc, _ = plan("--spec", str(spec), "--pod-netns", empty, "--volumes-dir", str(vols))
    finally:
        subprocess.run(["ip", "netns", "del", empty], capture_output=True, timeout=10, check=False)
    assert code == 3
    assert doc["network"] is None and doc["hypervisor"] is None
    assert doc["volumes"]["kernel"]["state"] == "present"
    assert doc["problems"][0]["stage"] == "network"
    assert "pod interface 'eth0' not found" in doc["problems"][0]["message"]


def test_offline_plan_for_virtink_shows_the_cloud_hypervisor_config(tmp_path: Path) -> None:
    vols = tmp_path / "volumes"
    (vols / "kernel").mkdir(parents=True)
    (vols / "kernel/vmlinux").write_bytes(b"\x7fELF")
    (vols / "ubuntu").mkdir()
    (vols / "ubuntu/disk.img").write_bytes(QCOW2_MAGIC + b"\0" * 64)
    example = REPO / "examples/virtink-pod-bridge.yaml"
    code, doc, err = plan("--offline", "--spec", str(example), "--volumes-dir", str(vols))
    assert code == 0, err
    hv = doc["hypervisor"]
    assert hv["kind"] == "cloud-hypervisor"
    assert hv["vm_config"]["payload"]["kernel"] == str(vols / "kernel/vmlinux")
    assert hv["vm_config"]["disks"][0]["image_type"] == "Qcow2"
    assert hv["add_net"][0]["mac"] == doc["network"]["nics"][0]["device"]["mac"]
    assert doc["network"]["nics"][0]["dhcp4"]["leases"][0]["address"] == "10.244.1.5/24"
